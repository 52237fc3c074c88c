// Playground: a multi-turn chat with one model over the native streaming API, with its
// settings, a JSON-schema mode, an optional moderation check, and the code for it.
import { html, useEffect, useRef, useState } from "../../vendor/preact-htm.js";
import { api, ApiError, streamChat } from "../api.js";
import { curlCode, pythonCode } from "../codegen.js";
import { CopyButton, ErrorMessage } from "../ui.js";

const EXAMPLE_SCHEMA = JSON.stringify(
  {
    type: "object",
    // Bounded (maxLength, enum), so that even a small model's reply completes within the token budget.
    properties: { answer: { type: "string", maxLength: 120 }, kind: { type: "string", enum: ["fact", "opinion", "not sure"] } },
    required: ["answer", "kind"],
  },
  null,
  2,
);

const DEFAULTS = { temperature: 0.6, topP: 0.9, maxTokens: 256 };

// The conversation as the API takes it: failed or refused turns are not sent again.
function wireMessages(system, turns) {
  const sent = turns.filter((t) => !t.error && !t.blocked).map((t) => ({ role: t.role, content: t.content }));
  return system.trim() ? [{ role: "system", content: system }, ...sent] : sent;
}

function schemaFrom(text) {
  try {
    const schema = JSON.parse(text);
    if (schema === null || typeof schema !== "object" || Array.isArray(schema)) return { error: "The schema must be a JSON object." };
    return { schema };
  } catch (err) {
    return { error: `The schema is not valid JSON: ${err.message}` };
  }
}

function requestBody(settings, messages) {
  const body = {
    model: settings.model,
    messages,
    temperature: settings.temperature,
    top_p: settings.topP,
    max_completion_tokens: settings.maxTokens,
  };
  if (settings.user.trim()) body.user = settings.user.trim();
  if (settings.jsonMode) {
    const { schema } = schemaFrom(settings.schemaText);
    body.response_format = { type: "json_schema", json_schema: { name: settings.schemaName || "Reply", schema: schema || {} } };
  }
  return body;
}

function Turn({ turn }) {
  if (turn.role === "user") {
    return html`<li class=${`turn user${turn.blocked ? " blocked" : ""}`}>
      <div class="who">You</div>
      <div class="text">${turn.content}</div>
      ${turn.blocked && html`<p class="flag">Not sent: moderation flagged it (${turn.blocked.join(", ") || "unsafe"}).</p>`}
    </li>`;
  }
  const streaming = turn.state === "streaming";
  return html`<li class="turn assistant" aria-busy=${streaming ? "true" : "false"} data-state=${turn.state}>
    <div class="who"><span class="model-name">${turn.model}</span>${streaming && html`<span class="typing"> · writing…</span>`}</div>
    <div class="text">${turn.content || (streaming ? "" : html`<span class="muted">(no text)</span>`)}</div>
    ${turn.error && html`<p class="error" role="alert">${turn.error}</p>`}
    ${turn.flagged && html`<p class="flag">Moderation flagged this reply (${turn.flagged.join(", ") || "unsafe"}).</p>`}
    ${turn.metrics &&
    html`<p class="metrics">${turn.metrics.num_prompt_tokens} prompt + ${turn.metrics.num_completion_tokens} completion tokens
      · stop: ${turn.stopReason}</p>`}
  </li>`;
}

function Slider({ id, label, min, max, step, value, onChange }) {
  return html`<div class="field slider">
    <label for=${id}>${label}</label>
    <div class="slider-row">
      <input id=${id} type="range" min=${min} max=${max} step=${step} value=${value}
        onInput=${(e) => onChange(Number(e.currentTarget.value))} />
      <output for=${id}>${value}</output>
    </div>
  </div>`;
}

function CodePanel({ body }) {
  const origin = location.origin;
  const curl = curlCode(origin, body);
  const py = pythonCode(origin, body);
  return html`<section class="card code-panel" id="code-panel" aria-labelledby="code-title">
    <h2 id="code-title">Code for these settings</h2>
    <p class="hint">Both read the key from <code>LLAMA_API_KEY</code>. Python: <code>pip install llama-api-client</code>.</p>
    <div class="code-block">
      <div class="code-head"><h3 id="code-curl-title">curl</h3><${CopyButton} text=${curl} label="Copy curl" /></div>
      <pre aria-labelledby="code-curl-title" tabindex="0"><code id="code-curl">${curl}</code></pre>
    </div>
    <div class="code-block">
      <div class="code-head"><h3 id="code-python-title">Python (llama_api_client)</h3><${CopyButton} text=${py} label="Copy Python" /></div>
      <pre aria-labelledby="code-python-title" tabindex="0"><code id="code-python">${py}</code></pre>
    </div>
  </section>`;
}

export function PlaygroundPage() {
  // Open beside the chat on a laptop; folded above it on a phone, where it would push the chat off screen.
  const [settingsOpen] = useState(() => matchMedia("(min-width: 721px)").matches);
  const [models, setModels] = useState([]);
  const [loadError, setLoadError] = useState(null);
  // ?model= picks the model (the Fine-tuning page's "Try it in the playground" links here with the tuned model).
  const [wanted] = useState(() => new URLSearchParams(location.search).get("model"));
  const [settings, setSettings] = useState({
    model: wanted || "",
    system: "",
    temperature: DEFAULTS.temperature,
    topP: DEFAULTS.topP,
    maxTokens: DEFAULTS.maxTokens,
    user: "",
    jsonMode: false,
    schemaName: "Reply",
    schemaText: EXAMPLE_SCHEMA,
    moderate: false,
  });
  const [turns, setTurns] = useState([]);
  const [draft, setDraft] = useState("");
  const [busy, setBusy] = useState(false);
  const [notice, setNotice] = useState(null);
  const [showCode, setShowCode] = useState(false);
  const abort = useRef(null);
  const log = useRef(null);

  useEffect(() => {
    api("/v1/models")
      .then((list) => {
        setModels(list.data);
        if (wanted && !list.data.some((m) => m.id === wanted)) {
          setNotice(`${wanted} is not among this key's models; showing ${list.data[0]?.id ?? "none"} instead.`);
          setSettings((s) => ({ ...s, model: list.data.length ? list.data[0].id : "" }));
        } else if (list.data.length) setSettings((s) => ({ ...s, model: s.model || list.data[0].id }));
      })
      .catch(setLoadError);
    return () => abort.current && abort.current.abort();
  }, []);

  useEffect(() => {
    if (log.current) log.current.scrollTop = log.current.scrollHeight;
  }, [turns]);

  const set = (name) => (value) => setSettings((s) => ({ ...s, [name]: value }));
  const model = models.find((m) => m.id === settings.model);
  const schemaCheck = settings.jsonMode ? schemaFrom(settings.schemaText) : {};
  const updateLast = (change) => setTurns((all) => [...all.slice(0, -1), { ...all[all.length - 1], ...change(all[all.length - 1]) }]);

  async function moderationCategories(messages) {
    const result = await api("/v1/moderations", { method: "POST", body: { messages } });
    const verdict = result.results[0];
    return verdict.flagged ? verdict.flagged_categories : null;
  }

  async function send(event) {
    event.preventDefault();
    const text = draft.trim();
    if (!text || busy || !settings.model) return;
    if (schemaCheck.error) {
      setNotice(schemaCheck.error);
      return;
    }
    setBusy(true);
    setNotice(null);
    const userTurn = { role: "user", content: text };
    const history = [...turns, userTurn];
    const messages = wireMessages(settings.system, history);
    let started = false; // the reply's turn is on screen: errors go there
    setDraft("");
    try {
      if (settings.moderate) {
        const flagged = await moderationCategories(messages);
        if (flagged) {
          setTurns([...turns, { ...userTurn, blocked: flagged }]);
          setNotice("Moderation flagged the message, so it was not sent to the model.");
          return;
        }
      }
      const body = requestBody(settings, messages);
      setTurns([...history, { role: "assistant", model: settings.model, content: "", state: "streaming" }]);
      started = true;
      abort.current = new AbortController();
      let reply = "";
      for await (const ev of streamChat(body, { signal: abort.current.signal })) {
        if (ev.event_type === "progress" && ev.delta && ev.delta.type === "text" && ev.delta.text) {
          reply += ev.delta.text;
          updateLast(() => ({ content: reply }));
        } else if (ev.event_type === "metrics") {
          const metrics = Object.fromEntries(ev.metrics.map((m) => [m.metric, m.value]));
          updateLast(() => ({ metrics, stopReason: ev.stop_reason }));
        }
      }
      updateLast(() => ({ state: "done" }));
      if (settings.moderate && reply) {
        const flagged = await moderationCategories([...messages, { role: "assistant", content: reply }]);
        if (flagged) updateLast(() => ({ flagged }));
      }
    } catch (err) {
      const message = err.name === "AbortError" ? "Stopped." : err instanceof ApiError ? err.message : String(err);
      if (started) updateLast(() => ({ state: "done", error: message }));
      else {
        setNotice(message);
        setDraft(text); // nothing was sent: keep the message for another try
      }
    } finally {
      abort.current = null;
      setBusy(false);
    }
  }

  function onComposerKey(event) {
    // Enter sends, Shift+Enter is a new line (as in the hosted playground).
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      event.currentTarget.form.requestSubmit();
    }
  }

  const codeMessages = wireMessages(settings.system, [...turns, ...(draft.trim() ? [{ role: "user", content: draft }] : [])]);
  const codeBody = requestBody(settings, codeMessages.length ? codeMessages : [{ role: "user", content: "Hello!" }]);

  return html`
    <div class="page-head">
      <h1>Playground</h1>
      <p class="lede">Try a model: replies stream from <code>POST /v1/chat/completions</code> as your key, and count in Usage.</p>
    </div>
    <${ErrorMessage} error=${loadError} />
    <div class="playground">
      <details class="card settings" open=${settingsOpen}>
        <summary>Model settings</summary>
        <div class="field">
          <label for="pg-model">Model</label>
          <select id="pg-model" value=${settings.model} onChange=${(e) => set("model")(e.currentTarget.value)}>
            ${models.filter((m) => !m.id.startsWith("ft:")).map(
              (m) => html`<option value=${m.id}>${m.id}${m.root && m.root !== m.id ? ` (served by ${m.root})` : ""}</option>`,
            )}
            ${models.some((m) => m.id.startsWith("ft:")) &&
            html`<optgroup label="Your team's tuned models">
              ${models.filter((m) => m.id.startsWith("ft:")).map((m) => html`<option value=${m.id}>${m.id}</option>`)}
            </optgroup>`}
          </select>
        </div>
        <div class="field">
          <label for="pg-system">System instructions</label>
          <textarea id="pg-system" rows="3" placeholder="You are a helpful assistant." value=${settings.system}
            onInput=${(e) => set("system")(e.currentTarget.value)}></textarea>
        </div>
        <${Slider} id="pg-temperature" label="Temperature" min="0" max="2" step="0.05" value=${settings.temperature} onChange=${set("temperature")} />
        <${Slider} id="pg-top-p" label="Top P" min="0" max="1" step="0.05" value=${settings.topP} onChange=${set("topP")} />
        <div class="field">
          <label for="pg-max-tokens">Max tokens</label>
          <input id="pg-max-tokens" type="number" min="1" max=${model ? model.context_window : undefined} step="1"
            value=${settings.maxTokens} onInput=${(e) => set("maxTokens")(Math.max(1, Math.round(Number(e.currentTarget.value)) || 1))} />
        </div>
        <div class="field">
          <label for="pg-user">End-user id (<code>user</code>)</label>
          <input id="pg-user" maxlength="256" placeholder="optional, e.g. user_12345" value=${settings.user}
            onInput=${(e) => set("user")(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label class="inline"><input id="pg-json" type="checkbox" checked=${settings.jsonMode}
            onChange=${(e) => set("jsonMode")(e.currentTarget.checked)} /> JSON-schema mode</label>
          ${model && !model.capabilities?.includes("json_schema") &&
          html`<p class="hint">${model.id} does not serve json_schema: requests will be refused.</p>`}
        </div>
        ${settings.jsonMode &&
        html`<div class="field">
            <label for="pg-schema-name">Schema name</label>
            <input id="pg-schema-name" value=${settings.schemaName} onInput=${(e) => set("schemaName")(e.currentTarget.value)} />
          </div>
          <div class="field">
            <label for="pg-schema">JSON schema</label>
            <textarea id="pg-schema" rows="8" class="mono" spellcheck="false" value=${settings.schemaText}
              aria-invalid=${schemaCheck.error ? "true" : "false"} aria-describedby="pg-schema-error"
              onInput=${(e) => set("schemaText")(e.currentTarget.value)}></textarea>
            <p class="hint" id="pg-schema-error">${schemaCheck.error || "Replies are valid JSON documents for this schema."}</p>
          </div>`}
        <div class="field">
          <label class="inline"><input id="pg-moderate" type="checkbox" checked=${settings.moderate}
            onChange=${(e) => set("moderate")(e.currentTarget.checked)} /> Moderation check</label>
          <p class="hint">Checks each message with <code>/v1/moderations</code> before sending it, and each reply.</p>
        </div>
      </details>
      <section class="card chat" aria-labelledby="chat-title">
        <div class="section-head">
          <h2 id="chat-title">Conversation</h2>
          <div class="actions">
            <button type="button" class="secondary small" aria-expanded=${showCode ? "true" : "false"} aria-controls="code-panel"
              onClick=${() => setShowCode(!showCode)}>${showCode ? "Hide code" : "View code"}</button>
            <button type="button" class="secondary small" disabled=${busy || turns.length === 0}
              onClick=${() => { setTurns([]); setNotice(null); }}>New chat</button>
          </div>
        </div>
        <ol class="turns" role="log" aria-label="Conversation" ref=${log} tabindex="0">
          ${turns.length === 0 && html`<li class="empty muted">No messages yet. Ask something below.</li>`}
          ${turns.map((turn, i) => html`<${Turn} key=${i} turn=${turn} />`)}
        </ol>
        <p class="status" role="status">${notice}</p>
        <form class="composer" onSubmit=${send}>
          <label class="visually-hidden" for="pg-message">Message</label>
          <textarea id="pg-message" rows="2" placeholder="Ask Llama…" value=${draft}
            onInput=${(e) => setDraft(e.currentTarget.value)} onKeyDown=${onComposerKey} aria-describedby="pg-message-hint"></textarea>
          <p class="visually-hidden" id="pg-message-hint">Enter sends, Shift+Enter starts a new line.</p>
          ${busy
            ? html`<button type="button" class="secondary" onClick=${() => abort.current && abort.current.abort()}>Stop</button>`
            : html`<button type="submit" disabled=${!draft.trim() || !settings.model}>Send</button>`}
        </form>
      </section>
    </div>
    ${showCode && html`<${CodePanel} body=${codeBody} />`}`;
}
