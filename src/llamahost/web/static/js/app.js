// The llamahost dashboard: sign in with an API key, then API keys, Playground, Usage, Datasets,
// Fine-tuning and Evaluation.
//
// Stack: Preact + htm from one vendored ES module (vendor/README.md), plain ES modules,
// no build step. Why: components and state without a toolchain to install or keep
// built, 13 KB shipped in the Python package, and no eval, so the page runs under a
// Content-Security-Policy that allows this origin only. Charts are inline SVG (charts.js).
import { html, render, useEffect, useState } from "../vendor/preact-htm.js";
import { api, ApiError, storedKey } from "./api.js";
import { DatasetsPage } from "./pages/datasets.js";
import { EvalsPage } from "./pages/evals.js";
import { FineTuningPage } from "./pages/finetune.js";
import { KeysPage } from "./pages/keys.js";
import { PlaygroundPage } from "./pages/playground.js";
import { UsagePage } from "./pages/usage.js";
import { ErrorMessage } from "./ui.js";

const BASE = "/dashboard";
const PAGES = [
  { path: "keys", title: "API keys", component: KeysPage },
  { path: "playground", title: "Playground", component: PlaygroundPage },
  { path: "usage", title: "Usage", component: UsagePage },
  { path: "datasets", title: "Datasets", component: DatasetsPage },
  { path: "fine-tuning", title: "Fine-tuning", component: FineTuningPage },
  { path: "evals", title: "Evaluation", component: EvalsPage },
];

function pageFromLocation() {
  const name = location.pathname.slice(BASE.length).replace(/^\/+|\/+$/g, "");
  return PAGES.find((page) => page.path === name) || PAGES[0];
}

function SignIn({ onSignedIn, initialError }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(initialError);
  const [busy, setBusy] = useState(false);
  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const me = await api("/team/v1/me", { key: key.trim() });
      storedKey.set(key.trim());
      onSignedIn(me);
    } catch (err) {
      setError(err instanceof ApiError && err.status === 401 ? `Sign-in refused: ${err.message}` : err);
    } finally {
      setBusy(false);
    }
  }
  return html`<main id="main" class="sign-in">
    <form class="card" onSubmit=${submit} aria-labelledby="sign-in-title">
      <h1 id="sign-in-title"><span class="logo" aria-hidden="true"></span>llamahost</h1>
      <p>Sign in with an API key. An operator key sees every team; an admin or member key its own team.</p>
      <label for="api-key">API key</label>
      <input id="api-key" name="api-key" type="password" autocomplete="off" spellcheck="false" required
        placeholder="llh_…" value=${key} onInput=${(e) => setKey(e.currentTarget.value)} />
      <p class="hint">Kept in this browser tab's session storage only, until you sign out or close the tab.</p>
      <${ErrorMessage} error=${error} />
      <button type="submit" disabled=${busy}>${busy ? "Signing in…" : "Sign in"}</button>
    </form>
  </main>`;
}

function Shell({ me, page, navigate, onSignOut }) {
  const Page = page.component;
  return html`
    <a class="skip-link" href="#main">Skip to content</a>
    <header class="top-bar">
      <a class="brand" href=${`${BASE}/keys`} onClick=${(e) => navigate(e, PAGES[0])}>
        <span class="logo" aria-hidden="true"></span>llamahost
      </a>
      <nav aria-label="Dashboard">
        <ul>
          ${PAGES.map(
            (p) => html`<li><a href=${`${BASE}/${p.path}`} aria-current=${p === page ? "page" : undefined}
              onClick=${(e) => navigate(e, p)}>${p.title}</a></li>`,
          )}
        </ul>
      </nav>
      <div class="who">
        <span><span class="visually-hidden">Signed in to team </span><strong>${me.team}</strong>
          <span class=${`badge ${me.role}`}>${me.role}</span></span>
        <button type="button" class="secondary small" onClick=${onSignOut}>Sign out</button>
      </div>
    </header>
    <main id="main" tabindex="-1">
      <${Page} key=${page.path} me=${me} />
    </main>`;
}

function App() {
  const [me, setMe] = useState(null);
  const [checking, setChecking] = useState(Boolean(storedKey.get()));
  const [signInError, setSignInError] = useState(null);
  const [page, setPage] = useState(pageFromLocation);

  useEffect(() => {
    // A stored key is checked again on every load: it may have been revoked meanwhile.
    if (!storedKey.get()) return;
    api("/team/v1/me")
      .then(setMe)
      .catch((err) => {
        storedKey.clear();
        setSignInError(`Signed out: ${err.message}`);
      })
      .finally(() => setChecking(false));
  }, []);

  useEffect(() => {
    const onPop = () => setPage(pageFromLocation());
    addEventListener("popstate", onPop);
    return () => removeEventListener("popstate", onPop);
  }, []);

  useEffect(() => {
    document.title = me ? `${page.title} · llamahost` : "Sign in · llamahost";
  }, [me, page]);

  function navigate(event, target) {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    if (target !== page) history.pushState(null, "", `${BASE}/${target.path}`);
    setPage(target);
    // Keyboard and screen-reader users land on the new page's content, not back on the nav.
    requestAnimationFrame(() => document.getElementById("main")?.focus());
  }

  function signOut() {
    storedKey.clear();
    setMe(null);
    setSignInError(null);
  }

  if (checking) return html`<main id="main" class="sign-in"><p aria-live="polite">Checking your key…</p></main>`;
  function signedIn(who) {
    setMe(who);
    // The form that had focus is gone: put it on the content rather than leave it nowhere.
    requestAnimationFrame(() => document.getElementById("main")?.focus());
  }

  if (!me) return html`<${SignIn} onSignedIn=${signedIn} initialError=${signInError} />`;
  return html`<${Shell} me=${me} page=${page} navigate=${navigate} onSignOut=${signOut} />`;
}

render(html`<${App} />`, document.getElementById("app"));
