// Evaluation: create an eval from a messages_eval dataset and graders, run it on one or
// more models side by side, watch each run's progress, compare the scores per model (a
// bar chart and a table) and read the items where the models disagree.
// Everything goes through the team's /v1/evals API (OpenAI's Evals shape), as a script would.
import { html, useEffect, useState } from "../../vendor/preact-htm.js";
import { api, query } from "../api.js";
import { ErrorMessage, TableRegion, When } from "../ui.js";

const POLL_SECONDS = 1.5;
const FINISHED = new Set(["completed", "canceled", "failed"]);
// Shorthand graders comparing the model's output with the row's reference field.
const GRADERS = [
  { id: "contains", label: "Contains the reference (ignoring case)", make: (ref) => ({
    type: "string_check", name: "contains", operation: "ilike", input: "{{sample.output_text}}", reference: ref }) },
  { id: "exact", label: "Equals the reference", make: (ref) => ({
    type: "string_check", name: "exact", operation: "eq", input: "{{sample.output_text}}", reference: ref }) },
  ...[["fuzzy_match", 0.8], ["rouge_l", 0.5], ["bleu", 0.3], ["cosine", 0.8]].map(([metric, threshold]) => ({
    id: metric, label: `${metric} ≥ ${threshold}`, make: (ref) => ({
      type: "text_similarity", name: metric, evaluation_metric: metric, input: "{{sample.output_text}}",
      reference: ref, pass_threshold: threshold }) })),
];
const percent = (value) => `${(100 * value).toFixed(1)}%`;

function NewEval({ onCreated }) {
  const [files, setFiles] = useState([]);
  const [models, setModels] = useState([]);
  const [form, setForm] = useState({ name: "", file: "", models: [], graders: ["contains"], reference: "answer", maxTokens: 64 });
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    api(`/v1/files${query({ purpose: "messages_eval", limit: 100 })}`)
      .then((list) => {
        setFiles(list.data);
        if (list.data.length) setForm((f) => ({ ...f, file: f.file || list.data[0].id }));
      })
      .catch(setError);
    api("/v1/models").then((list) => setModels(list.data.map((m) => m.id))).catch(setError);
  }, []);
  const toggle = (key, value) => (event) =>
    setForm((f) => ({ ...f, [key]: event.currentTarget.checked ? [...f[key], value] : f[key].filter((v) => v !== value) }));

  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const reference = `{{item.${form.reference.trim()}}}`;
      const ev = await api("/v1/evals", { method: "POST", body: {
        name: form.name || files.find((f) => f.id === form.file)?.filename || "evaluation",
        data_source_config: { type: "custom", item_schema: { type: "object" } },
        testing_criteria: GRADERS.filter((g) => form.graders.includes(g.id)).map((g) => g.make(reference)),
      } });
      for (const model of form.models) {
        await api(`/v1/evals/${encodeURIComponent(ev.id)}/runs`, { method: "POST", body: {
          name: model,
          data_source: {
            type: "completions", model,
            input_messages: { type: "item_reference", item_reference: "item.messages" },
            sampling_params: { temperature: 0, max_completion_tokens: Number(form.maxTokens) },
            source: { type: "file_id", id: form.file },
          },
        } });
      }
      onCreated(ev.id);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return html`<form class="card form-grid" onSubmit=${submit} aria-labelledby="new-eval-title">
    <h2 id="new-eval-title">New evaluation</h2>
    <div class="field">
      <label for="eval-name">Name</label>
      <input id="eval-name" value=${form.name} placeholder="optional" onInput=${(e) => setForm({ ...form, name: e.currentTarget.value })} />
    </div>
    <div class="field">
      <label for="eval-dataset">Dataset</label>
      <select id="eval-dataset" required value=${form.file} onChange=${(e) => setForm({ ...form, file: e.currentTarget.value })}>
        ${files.map((f) => html`<option value=${f.id}>${f.filename}</option>`)}
      </select>
      ${files.length === 0 && html`<p class="hint">Upload a messages_eval dataset on the Datasets page first.</p>`}
    </div>
    <fieldset class="field">
      <legend>Models</legend>
      ${models.filter((m) => !m.startsWith("ft:")).map((m) => html`<label class="check"><input type="checkbox"
        checked=${form.models.includes(m)} onChange=${toggle("models", m)} /> ${m}</label>`)}
    </fieldset>
    <fieldset class="field">
      <legend>Tuned models</legend>
      ${models.filter((m) => m.startsWith("ft:")).map((m) => html`<label class="check tuned"><input type="checkbox"
        checked=${form.models.includes(m)} onChange=${toggle("models", m)} /> ${m}</label>`)}
      ${!models.some((m) => m.startsWith("ft:")) && html`<p class="hint">Your team's fine-tuned models appear here,
        to compare with their base model.</p>`}
    </fieldset>
    <fieldset class="field">
      <legend>Graders</legend>
      ${GRADERS.map((g) => html`<label class="check"><input type="checkbox" checked=${form.graders.includes(g.id)}
        onChange=${toggle("graders", g.id)} /> ${g.label}</label>`)}
    </fieldset>
    <div class="field">
      <label for="eval-reference">Reference field</label>
      <input id="eval-reference" required value=${form.reference} onInput=${(e) => setForm({ ...form, reference: e.currentTarget.value })} />
      <p class="hint">The row field the output is compared with.</p>
    </div>
    <div class="field">
      <label for="eval-max-tokens">Max tokens per answer</label>
      <input id="eval-max-tokens" type="number" min="1" max="4096" value=${form.maxTokens}
        onInput=${(e) => setForm({ ...form, maxTokens: e.currentTarget.value })} />
    </div>
    <button type="submit" disabled=${busy || !form.file || form.models.length === 0 || form.graders.length === 0}>
      ${busy ? "Starting…" : "Run"}</button>
    <${ErrorMessage} error=${error} />
  </form>`;
}

function Chart({ runs }) {
  const width = 320;
  const bar = 22;
  return html`<svg class="eval-chart" role="img" aria-label="Pass rate per model" viewBox=${`0 0 ${width} ${runs.length * (bar + 8)}`}
    width=${width} height=${runs.length * (bar + 8)}>
    ${runs.map((r, i) => {
      const rate = r.result_counts.total ? r.result_counts.passed / r.result_counts.total : 0;
      return html`<g transform=${`translate(0 ${i * (bar + 8)})`}>
        <rect x="0" y="0" width=${width} height=${bar} class="track" />
        <rect x="0" y="0" width=${Math.max(1, rate * width)} height=${bar} class="fill" />
        <text x="6" y=${bar - 7}>${percent(rate)} ${r.model}</text>
      </g>`;
    })}
  </svg>`;
}

function Disagreements({ evalId, runs }) {
  const [rows, setRows] = useState(null);
  const [error, setError] = useState(null);
  const key = runs.map((r) => r.id).join(",");
  useEffect(() => {
    if (runs.length < 2) return;
    Promise.all(runs.map(async (r) => {
      const items = [];
      let after;
      for (;;) {
        const page = await api(`/v1/evals/${encodeURIComponent(evalId)}/runs/${encodeURIComponent(r.id)}/output_items${query({ limit: 100, after })}`);
        items.push(...page.data);
        if (!page.has_more) return { model: r.model, items };
        after = page.last_id;
      }
    }))
      .then((all) => {
        const byItem = new Map();
        for (const { model, items } of all) {
          for (const item of items) {
            const entry = byItem.get(item.datasource_item_id) || { item: item.datasource_item, verdicts: {} };
            entry.verdicts[model] = { status: item.status, output: item.sample.output?.[0]?.content ?? "" };
            byItem.set(item.datasource_item_id, entry);
          }
        }
        setRows([...byItem.entries()].filter(([, e]) => new Set(Object.values(e.verdicts).map((v) => v.status)).size > 1));
      })
      .catch(setError);
  }, [key]);
  if (runs.length < 2) return null;
  return html`<section aria-labelledby="disagree-title">
    <h3 id="disagree-title">Items where the models disagree</h3>
    <${ErrorMessage} error=${error} />
    ${rows && rows.length === 0 && html`<p>None: every item passed or failed on every model alike.</p>`}
    ${rows && rows.length > 0 && html`<${TableRegion} label="Items where the models disagree">
      <table id="disagreements-table">
        <thead><tr><th scope="col">Item</th>${runs.map((r) => html`<th scope="col">${r.model}</th>`)}</tr></thead>
        <tbody>${rows.map(([id, e]) => html`<tr><th scope="row">#${id}</th>
          ${runs.map((r) => {
            const v = e.verdicts[r.model];
            return html`<td><strong>${v ? v.status : "-"}</strong> <span class="hint">${v ? v.output.slice(0, 120) : ""}</span></td>`;
          })}</tr>`)}</tbody>
      </table>
    <//>`}
  </section>`;
}

function EvalDetail({ evalId }) {
  const [ev, setEv] = useState(null);
  const [runs, setRuns] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let stopped = false;
    let timer;
    async function load() {
      try {
        const [e, list] = await Promise.all([
          api(`/v1/evals/${encodeURIComponent(evalId)}`),
          api(`/v1/evals/${encodeURIComponent(evalId)}/runs${query({ limit: 100 })}`),
        ]);
        if (stopped) return;
        setEv(e);
        setRuns(list.data);
        setError(null);
        if (list.data.some((r) => !FINISHED.has(r.status))) timer = setTimeout(load, POLL_SECONDS * 1000);
      } catch (err) {
        if (!stopped) setError(err);
      }
    }
    load();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [evalId]);
  if (!ev || !runs) return html`<${ErrorMessage} error=${error} />`;
  const criteria = ev.testing_criteria.map((c) => c.name);
  const finished = runs.filter((r) => r.status === "completed");
  return html`<section class="card" aria-labelledby="eval-detail-title">
    <h2 id="eval-detail-title">${ev.name || ev.id}</h2>
    <${ErrorMessage} error=${error} />
    ${finished.length > 0 && html`<${Chart} runs=${finished} />`}
    <${TableRegion} label="Scores per model">
      <table id="runs-table">
        <thead><tr><th scope="col">Model</th><th scope="col">Progress</th><th scope="col">Pass rate</th>
          ${criteria.map((c) => html`<th scope="col">${c}</th>`)}<th scope="col">Errored</th></tr></thead>
        <tbody>${runs.map((r) => {
          const total = r.result_counts.total || 1;
          const done = r.progress ? r.progress.done : r.result_counts.passed + r.result_counts.failed + r.result_counts.errored;
          const per = Object.fromEntries(r.per_testing_criteria_results.map((c) => [c.testing_criteria, c.passed]));
          return html`<tr><th scope="row">${r.model}</th>
            <td><progress max=${r.result_counts.total} value=${done} aria-label=${`${r.model} progress`}>${done}</progress>
              <span class="hint eval-progress">${done} of ${r.result_counts.total} · ${r.status}</span></td>
            <td>${percent(r.result_counts.passed / total)}</td>
            ${criteria.map((c) => html`<td>${percent((per[c] || 0) / total)}</td>`)}
            <td>${r.result_counts.errored}</td></tr>`;
        })}</tbody>
      </table>
    <//>
    ${finished.length === runs.length && html`<${Disagreements} evalId=${evalId} runs=${finished} />`}
  </section>`;
}

export function EvalsPage() {
  const [evals, setEvals] = useState(null);
  const [selected, setSelected] = useState(null);
  const [error, setError] = useState(null);
  const [refreshed, setRefreshed] = useState(0);
  useEffect(() => {
    api(`/v1/evals${query({ limit: 100, order: "desc" })}`).then((list) => setEvals(list.data)).catch(setError);
  }, [refreshed]);
  return html`<div class="page-head">
      <h1>Evaluation</h1>
      <p class="lede">Run an evaluation dataset on models side by side, graded by the rules you pick.</p>
    </div>
    <${NewEval} onCreated=${(id) => {
      setSelected(id);
      setRefreshed((n) => n + 1);
    }} />
    ${selected && html`<${EvalDetail} evalId=${selected} key=${selected} />`}
    <section class="card" aria-labelledby="evals-title">
      <h2 id="evals-title">Evaluations</h2>
      <${ErrorMessage} error=${error} />
      ${evals && evals.length === 0 && html`<p>No evaluations yet.</p>`}
      ${evals && evals.length > 0 && html`<${TableRegion} label="Evaluations">
        <table id="evals-table">
          <thead><tr><th scope="col">Name</th><th scope="col">Graders</th><th scope="col">Created</th>
            <th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
          <tbody>${evals.map((e) => html`<tr><th scope="row">${e.name || e.id}</th>
            <td>${e.testing_criteria.map((c) => c.name).join(", ")}</td>
            <td><${When} value=${new Date(e.created_at * 1000).toISOString()} /></td>
            <td class="actions"><button type="button" class="secondary small" onClick=${() => setSelected(e.id)}>
              Open<span class="visually-hidden"> ${e.name || e.id}</span></button></td></tr>`)}</tbody>
        </table>
      <//>`}
    </section>`;
}
