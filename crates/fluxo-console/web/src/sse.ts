// Server-sent event streams with JSON data, reporting trouble in the banner.

import { clearError, errorMessage, reportUnexpected, setError } from "./banner";

export type EventHandlers = Record<string, (data: unknown) => void>;

/**
 * Opens `url` and calls `handlers[event]` with each event's parsed data.
 * `what` names the stream in error messages. Returns the function that
 * closes it.
 */
export function openEvents(url: string, what: string, handlers: EventHandlers): () => void {
  const key = `stream:${url}`;
  const es = new EventSource(url);
  let closed = false;
  for (const [name, handle] of Object.entries(handlers)) {
    es.addEventListener(name, (ev) => {
      clearError(key);
      let data: unknown;
      try {
        data = JSON.parse((ev as MessageEvent<string>).data);
      } catch {
        setError(key, `${what}: the server sent an event that is not JSON`);
        return;
      }
      try {
        handle(data);
      } catch (e) {
        reportUnexpected(e);
      }
    });
  }
  es.addEventListener("open", () => clearError(key));
  es.addEventListener("error", (ev) => {
    // A server may also send an event named "error" carrying a message.
    if (ev instanceof MessageEvent && typeof ev.data === "string" && ev.data !== "") {
      setError(key, `${what}: ${serverMessage(ev.data)}`);
    } else if (es.readyState === EventSource.CLOSED) {
      // The browser gives up for good on an HTTP error and does not say
      // which; ask again to show the server's own message.
      void refusal(url).then((message) => {
        if (!closed) setError(key, `${what}: ${message}`);
      });
    } else {
      setError(key, `${what}: connection lost, reconnecting…`);
    }
  });
  return () => {
    closed = true;
    es.close();
    clearError(key);
  };
}

function serverMessage(data: string): string {
  try {
    const parsed: unknown = JSON.parse(data);
    if (typeof parsed === "object" && parsed !== null && "error" in parsed) return String(parsed.error);
  } catch {
    // Not JSON: the text is the message.
  }
  return data;
}

/** Why `url` refused to stream: the `error` of its HTTP error answer. */
async function refusal(url: string): Promise<string> {
  const abort = new AbortController();
  try {
    const res = await fetch(url, { signal: abort.signal, headers: { Accept: "text/event-stream" } });
    if (res.ok) return "the stream ended";
    return serverMessage(await res.text()) || `${res.status} ${res.statusText}`;
  } catch (e) {
    return `cannot reach the server (${errorMessage(e)})`;
  } finally {
    abort.abort();
  }
}
