// The error banner: a strip above the page listing the current errors. Each
// error has a key naming what failed (a poller, a stream, the last action),
// so the next success of the same thing takes its message away again. The
// banner element exists only while there is at least one error.

const errors = new Map<string, string>();
let slot: HTMLElement | null = null;

/** Where the banner goes; called once by the layout. */
export function attachBanner(parent: HTMLElement): void {
  slot = parent;
  render();
}

export function setError(key: string, message: string): void {
  if (errors.get(key) === message) return;
  errors.set(key, message);
  render();
}

export function clearError(key: string): void {
  if (errors.delete(key)) render();
}

export function clearAllErrors(): void {
  errors.clear();
  render();
}

/** Reports an error nobody expected (a bug) instead of letting it escape. */
export function reportUnexpected(e: unknown): void {
  setError("unexpected", `Unexpected error: ${errorMessage(e)}`);
}

export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Awaits `p`. On success clears the error under `key` and returns the value;
 * on failure shows "`what`: message" under `key` and returns undefined.
 */
export async function attempt<T>(key: string, what: string, p: Promise<T>): Promise<T | undefined> {
  try {
    const value = await p;
    clearError(key);
    return value;
  } catch (e) {
    setError(key, `${what}: ${errorMessage(e)}`);
    return undefined;
  }
}

/** `attempt` for what the user did (create, produce, delete...): one shared key. */
export const act = <T>(what: string, p: Promise<T>): Promise<T | undefined> => attempt("action", what, p);

function render(): void {
  if (!slot) return;
  slot.replaceChildren();
  if (errors.size === 0) return;
  const banner = document.createElement("div");
  banner.className = "error-banner";
  banner.setAttribute("data-testid", "error-banner");
  banner.setAttribute("role", "alert");
  const list = document.createElement("div");
  list.className = "error-list";
  // Two keys may fail for the same reason (a topic that is gone): say it once.
  for (const message of new Set(errors.values())) {
    const line = document.createElement("div");
    line.textContent = message;
    list.append(line);
  }
  const close = document.createElement("button");
  close.type = "button";
  close.className = "error-close";
  // The × is drawn by CSS so the banner's text is only the messages.
  close.setAttribute("aria-label", "Dismiss");
  close.title = "Dismiss";
  close.addEventListener("click", clearAllErrors);
  banner.append(list, close);
  slot.append(banner);
}
