// Fine-tuning: start a LoRA job on an uploaded messages_finetune dataset, follow the
// team's jobs, a job's learning curve (training and validation loss per step, from its
// metrics events) and its events as they come, cancel it, download its adapter, and try
// the tuned model in the playground.
// Everything goes through /v1/fine_tuning/jobs (OpenAI's wire shape), as a script would.
import { html, useEffect, useRef, useState } from "../../vendor/preact-htm.js";
import { api, ApiError, isAdmin, query, storedKey } from "../api.js";
import { LineChart } from "../charts.js";
import { ErrorMessage, goTo, number, TableRegion, When } from "../ui.js";

const POLL_SECONDS = 2;
const ACTIVE = new Set(["validating_files", "queued", "running"]);
const EVENTS_PAGE = 100;
const PLAYGROUND = "/dashboard/playground";
// The job request's fields, by the `param` a 400 names: the form marks the one refused.
const FIELD_OF_PARAM = {
  training_file: "ft-dataset",
  validation_file: "ft-validation",
  model: "ft-model",
  suffix: "ft-suffix",
  "hyperparameters.n_epochs": "ft-epochs",
  "hyperparameters.batch_size": "ft-batch-size",
  "hyperparameters.learning_rate_multiplier": "ft-lr",
};

// Events are seconds apart: their time of day, to the second (the job's dates are above them).
const clock = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const when = (seconds) => (seconds ? new Date(seconds * 1000).toISOString() : null);
const jobPath = (id, tail = "") => `/v1/fine_tuning/jobs/${encodeURIComponent(id)}${tail}`;
export const playgroundHref = (model) => `${PLAYGROUND}${query({ model })}`;

function Status({ job }) {
  return html`<span class=${`badge ${job.status}`}>${job.status.replace("_", " ")}</span>`;
}

// "auto" when left empty; a number otherwise (the server checks the range and says which field).
const hyper = (text, integer) => (text.trim() === "" ? "auto" : integer ? Number.parseInt(text, 10) : Number(text));

function NewJob({ onCreated }) {
  const [files, setFiles] = useState(null);
  const [models, setModels] = useState([]);
  const [form, setForm] = useState({ file: "", validation: "", model: "", epochs: "", batch: "", lr: "", suffix: "" });
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    api(`/v1/files${query({ purpose: "messages_finetune", limit: 100 })}`)
      .then((list) => {
        const ready = list.data.filter((f) => f.status === "processed");
        setFiles(ready);
        if (ready.length) setForm((f) => ({ ...f, file: f.file || ready[0].id }));
      })
      .catch(setError);
    // Base models: the configured ids (an alias tunes the model it names; a tuned model is not tuned again).
    api("/v1/models")
      .then((list) => {
        const bases = [...new Set(list.data.filter((m) => !m.id.startsWith("ft:")).map((m) => m.root || m.id))];
        setModels(bases);
        if (bases.length) setForm((f) => ({ ...f, model: f.model || bases[0] }));
      })
      .catch(setError);
  }, []);

  const set = (name) => (e) => setForm({ ...form, [name]: e.currentTarget.value });
  const invalid = (id) => (error instanceof ApiError && FIELD_OF_PARAM[error.param] === id ? "true" : "false");

  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body = {
        model: form.model,
        training_file: form.file,
        method: { type: "supervised", supervised: { hyperparameters: {
          n_epochs: hyper(form.epochs, true),
          batch_size: hyper(form.batch, true),
          learning_rate_multiplier: hyper(form.lr, false),
        } } },
      };
      if (form.validation) body.validation_file = form.validation;
      if (form.suffix.trim()) body.suffix = form.suffix.trim();
      // The request names the hyperparameters under method (OpenAI's current form); a 400
      // names them so, and the form maps that back to its field.
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body });
      onCreated(job);
    } catch (err) {
      if (err instanceof ApiError && err.param) err.param = err.param.replace("method.supervised.", "");
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return html`<form class="card form-grid" onSubmit=${submit} aria-labelledby="new-job-title">
    <h2 id="new-job-title">New fine-tuning job</h2>
    <div class="field">
      <label for="ft-dataset">Training dataset</label>
      <select id="ft-dataset" required value=${form.file} aria-invalid=${invalid("ft-dataset")} onChange=${set("file")}>
        ${(files || []).map((f) => html`<option value=${f.id}>${f.filename}</option>`)}
      </select>
      ${files && files.length === 0 && html`<p class="hint">Upload a fine-tuning dataset (messages_finetune) on the Datasets page first.</p>`}
    </div>
    <div class="field">
      <label for="ft-validation">Validation dataset</label>
      <select id="ft-validation" value=${form.validation} aria-invalid=${invalid("ft-validation")} onChange=${set("validation")}>
        <option value="">None</option>
        ${(files || []).map((f) => html`<option value=${f.id}>${f.filename}</option>`)}
      </select>
      <p class="hint">Its loss is measured after every epoch.</p>
    </div>
    <div class="field">
      <label for="ft-model">Base model</label>
      <select id="ft-model" required value=${form.model} aria-invalid=${invalid("ft-model")} onChange=${set("model")}>
        ${models.map((m) => html`<option value=${m}>${m}</option>`)}
      </select>
    </div>
    <div class="field">
      <label for="ft-suffix">Suffix</label>
      <input id="ft-suffix" maxlength="40" pattern="[A-Za-z0-9_\\-]{1,40}" placeholder="optional, e.g. support-v1"
        value=${form.suffix} aria-invalid=${invalid("ft-suffix")} aria-describedby="ft-suffix-hint" onInput=${set("suffix")} />
      <p class="hint" id="ft-suffix-hint">Part of the tuned model's name: letters, digits, _ and -.</p>
    </div>
    <div class="field">
      <label for="ft-epochs">Epochs</label>
      <input id="ft-epochs" type="number" min="1" max="50" step="1" placeholder="auto" value=${form.epochs}
        aria-invalid=${invalid("ft-epochs")} onInput=${set("epochs")} />
    </div>
    <div class="field">
      <label for="ft-batch-size">Batch size</label>
      <input id="ft-batch-size" type="number" min="1" max="256" step="1" placeholder="auto" value=${form.batch}
        aria-invalid=${invalid("ft-batch-size")} onInput=${set("batch")} />
    </div>
    <div class="field">
      <label for="ft-lr">Learning rate multiplier</label>
      <input id="ft-lr" type="number" min="0.01" max="10" step="any" placeholder="auto" value=${form.lr}
        aria-invalid=${invalid("ft-lr")} aria-describedby="ft-lr-hint" onInput=${set("lr")} />
      <p class="hint" id="ft-lr-hint">Times the base learning rate of 3e-4. Empty fields are "auto".</p>
    </div>
    <div class="actions">
      <button type="submit" disabled=${busy || !form.file || !form.model}>${busy ? "Creating…" : "Create job"}</button>
    </div>
    <${ErrorMessage} error=${error} />
  </form>`;
}

// The events newer than the ones known: the API lists newest first, so read pages until
// a known one appears. Returned oldest first.
async function newEvents(jobId, known) {
  const fresh = [];
  let after;
  for (;;) {
    const page = await api(jobPath(jobId, `/events${query({ limit: EVENTS_PAGE, after })}`));
    for (const event of page.data) {
      if (known.has(event.id)) return fresh.reverse();
      fresh.push(event);
    }
    if (!page.has_more || page.data.length === 0) return fresh.reverse();
    after = page.data[page.data.length - 1].id;
  }
}

// One point per step (a resumed job replays steps after its checkpoint: the last word counts).
function curves(events) {
  const train = new Map();
  const valid = new Map();
  for (const e of events) {
    if (e.type !== "metrics" || !Number.isInteger(e.data?.step)) continue;
    if (typeof e.data.train_loss === "number") train.set(e.data.step, e.data.train_loss);
    if (typeof e.data.valid_loss === "number") valid.set(e.data.step, e.data.valid_loss);
  }
  const points = (m) => [...m.entries()].sort((a, b) => a[0] - b[0]).map(([x, y]) => ({ x, y }));
  return { train: points(train), valid: points(valid) };
}

function LearningCurve({ events }) {
  const { train, valid } = curves(events);
  if (train.length === 0) return html`<p class="muted" id="curve-empty">The learning curve appears with the first training step.</p>`;
  const last = train[train.length - 1];
  let summary = `${train.length} training step${train.length === 1 ? "" : "s"}; training loss ${train[0].y.toFixed(3)} at step ${train[0].x}, ${last.y.toFixed(3)} at step ${last.x}.`;
  if (valid.length) summary += ` Validation loss ${valid[valid.length - 1].y.toFixed(3)} at step ${valid[valid.length - 1].x}.`;
  const series = [{ name: "Training loss", index: 0, points: train }];
  if (valid.length) series.push({ name: "Validation loss", index: 1, points: valid });
  return html`<${LineChart} id="learning-curve" title="Learning curve" xLabel="Step" series=${series} summary=${summary} />`;
}

function EventsLog({ events }) {
  const ref = useRef(null);
  useEffect(() => {
    if (ref.current) ref.current.scrollTop = ref.current.scrollHeight;
  }, [events.length]);
  return html`<section aria-labelledby="events-title">
    <h3 id="events-title">Events</h3>
    <ol class="events-log" id="events-log" role="log" aria-label="Job events" tabindex="0" ref=${ref}>
      ${events.map((e) => html`<li class=${`event ${e.level}`}>
        <time datetime=${when(e.created_at)}>${clock.format(new Date(e.created_at * 1000))}</time>
        <span class="visually-hidden">${e.level}: </span>
        ${e.level !== "info" && html`<span class=${`badge ${e.level}`} aria-hidden="true">${e.level}</span>`}
        <span class="message">${e.message}</span></li>`)}
    </ol>
  </section>`;
}

async function downloadArtifacts(job) {
  const response = await fetch(jobPath(job.id, "/artifacts"), { headers: { Authorization: `Bearer ${storedKey.get() ?? ""}` } });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const disposition = response.headers.get("Content-Disposition") || "";
  const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || `${job.id}-adapter.tar.gz`;
  // The archive needs the key, so it cannot be a plain link: fetched, then saved from memory.
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

function JobDetail({ jobId, me, onChanged }) {
  const [job, setJob] = useState(null);
  const [events, setEvents] = useState([]);
  const [checkpoints, setCheckpoints] = useState([]);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(null);
  const [poke, setPoke] = useState(0);

  useEffect(() => {
    let stopped = false;
    let timer;
    const known = new Set();
    let all = [];
    async function load() {
      try {
        const current = await api(jobPath(jobId));
        const fresh = await newEvents(jobId, known);
        const listed = await api(jobPath(jobId, `/checkpoints${query({ limit: 100 })}`));
        if (stopped) return;
        for (const e of fresh) known.add(e.id);
        all = [...all, ...fresh];
        setJob(current);
        setEvents(all);
        setCheckpoints(listed.data);
        setError(null);
        // The job is read before its events: once it has ended, the events read after it are complete.
        if (ACTIVE.has(current.status)) timer = setTimeout(load, POLL_SECONDS * 1000);
        else onChanged(current);
      } catch (err) {
        if (!stopped) {
          setError(err);
          timer = setTimeout(load, POLL_SECONDS * 1000 * 2);
        }
      }
    }
    load();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [jobId, poke]);

  async function cancel() {
    if (!confirm(`Cancel fine-tuning job ${job.id}? Its training stops.`)) return;
    setBusy("cancel");
    try {
      await api(jobPath(job.id, "/cancel"), { method: "POST" });
      setPoke(poke + 1);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  }

  async function download() {
    setBusy("download");
    setError(null);
    try {
      await downloadArtifacts(job);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(null);
    }
  }

  if (!job) return html`<section class="card"><${ErrorMessage} error=${error} /><p aria-live="polite">Loading…</p></section>`;
  const hp = job.hyperparameters;
  return html`<section class="card job-detail" aria-labelledby="job-title">
    <div class="section-head">
      <h2 id="job-title">Job ${job.id}</h2>
      <${Status} job=${job} />
    </div>
    <${ErrorMessage} error=${error} />
    ${job.error && html`<p class="error" role="alert">${job.error.message}</p>`}
    <dl class="facts">
      <div><dt>Base model</dt><dd>${job.model}</dd></div>
      <div><dt>Tuned model</dt><dd>${job.fine_tuned_model ? html`<code id="tuned-model">${job.fine_tuned_model}</code>` : html`<span class="muted">when it succeeds</span>`}</dd></div>
      <div><dt>Hyperparameters</dt><dd>${hp.n_epochs} epochs, batch size ${hp.batch_size}, learning rate ×${hp.learning_rate_multiplier}</dd></div>
      <div><dt>Trained tokens</dt><dd>${job.trained_tokens === null ? "—" : number.format(job.trained_tokens)}</dd></div>
      <div><dt>Created</dt><dd><${When} value=${when(job.created_at)} /></dd></div>
      <div><dt>Finished</dt><dd><${When} value=${when(job.finished_at)} empty="—" /></dd></div>
    </dl>
    <div class="actions">
      ${job.status === "succeeded" && job.fine_tuned_model &&
      html`<a class="button" id="try-in-playground" href=${playgroundHref(job.fine_tuned_model)}
        onClick=${(e) => goTo(e, playgroundHref(job.fine_tuned_model))}>Try it in the playground</a>
        <button type="button" class="secondary" disabled=${busy === "download"} onClick=${download}>
          ${busy === "download" ? "Downloading…" : "Download adapter"}</button>`}
      ${ACTIVE.has(job.status) && isAdmin(me) &&
      html`<button type="button" class="danger" disabled=${busy === "cancel"} onClick=${cancel}>Cancel job</button>`}
    </div>
    <${LearningCurve} events=${events} />
    ${checkpoints.length > 0 && html`<h3 id="checkpoints-title">Checkpoints</h3>
      <p class="hint">One per epoch; each is a model you can call by its name.</p>
      <${TableRegion} label="Checkpoints">
      <table id="checkpoints-table" aria-labelledby="checkpoints-title">
        <thead><tr><th scope="col" class="num">Step</th><th scope="col" class="num">Training loss</th>
          <th scope="col" class="num">Validation loss</th><th scope="col">Model</th></tr></thead>
        <tbody>${checkpoints.map((c) => html`<tr><th scope="row" class="num">${c.step_number}</th>
          <td class="num">${c.metrics.train_loss === null ? "—" : c.metrics.train_loss.toFixed(4)}</td>
          <td class="num">${c.metrics.valid_loss === null ? "—" : c.metrics.valid_loss.toFixed(4)}</td>
          <td><code>${c.fine_tuned_model_checkpoint}</code></td></tr>`)}</tbody>
      </table>
    <//>`}
    <${EventsLog} events=${events} />
  </section>`;
}

export function FineTuningPage({ me }) {
  const [jobs, setJobs] = useState(null);
  const [selected, setSelected] = useState(null);
  const [error, setError] = useState(null);
  const [refreshed, setRefreshed] = useState(0);

  useEffect(() => {
    let stopped = false;
    let timer;
    async function load() {
      try {
        const list = await api(`/v1/fine_tuning/jobs${query({ limit: 100 })}`);
        if (stopped) return;
        setJobs(list.data);
        setError(null);
        if (list.data.some((j) => ACTIVE.has(j.status))) timer = setTimeout(load, POLL_SECONDS * 1000 * 2);
      } catch (err) {
        if (!stopped) setError(err);
      }
    }
    load();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [refreshed]);

  const refresh = () => setRefreshed((n) => n + 1);
  return html`<div class="page-head">
      <h1>Fine-tuning</h1>
      <p class="lede">Tune a base model on your team's dataset with LoRA; the tuned model is callable by its name, by your team only.</p>
    </div>
    ${isAdmin(me)
      ? html`<${NewJob} onCreated=${(job) => {
          setSelected(job.id);
          refresh();
        }} />`
      : html`<p class="card hint">Creating and cancelling jobs needs an admin key of the team; this key can follow them and call the tuned models.</p>`}
    ${selected && html`<${JobDetail} key=${selected} jobId=${selected} me=${me} onChanged=${refresh} />`}
    <section class="card" aria-labelledby="jobs-title">
      <h2 id="jobs-title">Jobs</h2>
      <${ErrorMessage} error=${error} />
      ${jobs && jobs.length === 0 && html`<p class="muted">No fine-tuning jobs yet.</p>`}
      ${jobs && jobs.length > 0 && html`<${TableRegion} label="Fine-tuning jobs">
        <table id="jobs-table">
          <thead><tr><th scope="col">Job</th><th scope="col">Status</th><th scope="col">Base model</th>
            <th scope="col">Tuned model</th><th scope="col">Created</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
          <tbody>${jobs.map((j) => html`<tr data-job-id=${j.id} aria-current=${j.id === selected ? "true" : undefined}>
            <th scope="row"><code>${j.id}</code></th>
            <td><${Status} job=${j} /></td><td>${j.model}</td>
            <td>${j.fine_tuned_model ? html`<code>${j.fine_tuned_model}</code>` : html`<span class="muted">—</span>`}</td>
            <td><${When} value=${when(j.created_at)} /></td>
            <td class="actions"><button type="button" class="secondary small" onClick=${() => setSelected(j.id)}>
              Open<span class="visually-hidden"> job ${j.id}</span></button></td></tr>`)}</tbody>
        </table>
      <//>`}
    </section>`;
}
