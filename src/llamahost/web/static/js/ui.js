// Small pieces every page uses.
import { html, useEffect, useRef, useState } from "../vendor/preact-htm.js";

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function When({ value, empty = "never" }) {
  if (!value) return html`<span class="muted">${empty}</span>`;
  return html`<time datetime=${value}>${dateTime.format(new Date(value))}</time>`;
}

export const number = new Intl.NumberFormat();

// A button that copies `text`, saying so to screen readers too.
export function CopyButton({ text, label = "Copy", id }) {
  const [copied, setCopied] = useState(false);
  useEffect(() => {
    if (!copied) return undefined;
    const timer = setTimeout(() => setCopied(false), 2000);
    return () => clearTimeout(timer);
  }, [copied]);
  async function copy() {
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard permission (e.g. plain http on a non-local host): the text is
      // selectable in its field, so select it for a manual copy instead.
      const field = id && document.getElementById(id);
      if (field && field.select) field.select();
      return;
    }
    setCopied(true);
  }
  return html`<button type="button" class="secondary" onClick=${copy}>
    ${copied ? "Copied" : label}<span class="visually-hidden" aria-live="polite">${copied ? " to the clipboard" : ""}</span>
  </button>`;
}

export function ErrorMessage({ error }) {
  if (!error) return null;
  const text = typeof error === "string" ? error : error.message;
  return html`<p class="error" role="alert">${text}</p>`;
}

// A table that scrolls sideways inside its own region on narrow screens, so the page never does.
export function TableRegion({ label, children }) {
  return html`<div class="table-scroll" role="region" aria-label=${label} tabindex="0">${children}</div>`;
}

// Focus the element once after it appears (a page heading, a revealed secret).
export function useFocusOnMount() {
  const ref = useRef(null);
  useEffect(() => {
    if (ref.current) ref.current.focus();
  }, []);
  return ref;
}

// Go to another dashboard page (with a query, e.g. the playground's ?model=) without a
// reload: the app follows history's popstate, as it does for the back button.
export function goTo(event, href) {
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  history.pushState(null, "", href);
  dispatchEvent(new PopStateEvent("popstate"));
  requestAnimationFrame(() => document.getElementById("main")?.focus());
}
