// A page's lifetime. The router disposes the scope when the user navigates
// away: timers stop, event streams close, charts are destroyed, and code
// still awaiting a response sees `alive` false and leaves the DOM alone.

import { reportUnexpected } from "./banner";

const POLL_MS = 2000;

export class Scope {
  alive = true;
  private cleanups: (() => void)[] = [];

  /** Runs `fn` when the page goes away. */
  onDispose(fn: () => void): void {
    if (this.alive) this.cleanups.push(fn);
    else fn();
  }

  dispose(): void {
    this.alive = false;
    for (const fn of this.cleanups.splice(0).reverse()) {
      try {
        fn();
      } catch (e) {
        reportUnexpected(e);
      }
    }
  }

  /**
   * Runs `task` now and then `ms` after each run ends (so slow answers never
   * pile up), skipping runs while the browser tab is hidden. Returns a
   * function that runs the task at once, e.g. after the user changed
   * something; a call during a run queues one more run.
   */
  poll(task: () => Promise<void>, ms = POLL_MS): () => void {
    let timer: number | undefined;
    let running = false;
    let again = false;
    const run = async (): Promise<void> => {
      window.clearTimeout(timer);
      timer = undefined;
      if (!this.alive) return;
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        if (!document.hidden) await task();
      } catch (e) {
        reportUnexpected(e);
      } finally {
        running = false;
      }
      if (!this.alive) return;
      if (again) {
        again = false;
        void run();
      } else {
        timer = window.setTimeout(() => void run(), ms);
      }
    };
    this.onDispose(() => window.clearTimeout(timer));
    void run();
    return () => void run();
  }
}
