// Datasets: upload a file with the Llama API's resumable protocol (POST /v1/uploads, then
// parts with X-Upload-Offset), with a progress bar that resumes from the server's offset
// after a network error; unfinished uploads (GET /v1/uploads) to resume or cancel; the
// team's files, a dataset's first rows, delete.
// Every key uses its own team's /v1 files (files belong to the key's team).
import { html, useEffect, useState } from "../../vendor/preact-htm.js";
import { api, ApiError, query, storedKey } from "../api.js";
import { ErrorMessage, number, TableRegion, When } from "../ui.js";

const PART_BYTES = 4 * 1024 * 1024;
const RETRY_SECONDS = 2;
const PREVIEW_BYTES = 64 * 1024;
const PREVIEW_ROWS = 5;
const PURPOSES = [
  { value: "messages_finetune", label: "Fine-tuning dataset (messages_finetune)" },
  { value: "messages_eval", label: "Evaluation dataset (messages_eval)" },
  { value: "attachment", label: "Attachment" },
];
const DATASET = new Set(["messages_finetune", "messages_eval"]);
// The API's MIME types an attachment may have (a dataset is always application/jsonl).
const KNOWN_TYPES = new Set([
  "image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp", "image/x-icon", "audio/mp3", "audio/mpeg",
  "audio/wav", "audio/x-wav", "application/jsonl", "application/json", "text/plain", "video/mp4", "application/pdf",
]);

const sleep = (seconds) => new Promise((resolve) => setTimeout(resolve, seconds * 1000));

async function sendPart(uploadId, blob, offset) {
  const form = new FormData();
  form.append("data", blob, "part");
  const response = await fetch(`/v1/uploads/${encodeURIComponent(uploadId)}`, {
    method: "POST",
    headers: { Authorization: `Bearer ${storedKey.get() ?? ""}`, "X-Upload-Offset": String(offset) },
    body: form,
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function mimeFor(file, purpose) {
  return DATASET.has(purpose) ? "application/jsonl" : KNOWN_TYPES.has(file.type) ? file.type : "text/plain";
}

// Send `file` from `offset` on; a network failure waits and asks the server where to
// resume (a part that reached it before the failure is not sent twice).
async function sendFrom(uploadId, file, offset, onProgress, onRetry) {
  for (;;) {
    try {
      const part = await sendPart(uploadId, file.slice(offset, offset + PART_BYTES), offset);
      offset = part.offset;
      onProgress(offset, file.size);
      if (part.file_id) return part.file_id;
    } catch (err) {
      if (err instanceof ApiError && err.status !== 409) throw err; // refused: retrying cannot help
      onRetry(err);
      await sleep(RETRY_SECONDS);
      const status = await api(`/v1/uploads/${encodeURIComponent(uploadId)}`); // 409 or network: ask
      offset = status.offset;
      onProgress(offset, file.size);
      if (status.file_id) return status.file_id; // the last part landed before the connection broke
    }
  }
}

async function uploadFile(file, purpose, onProgress, onRetry) {
  const session = await api("/v1/uploads", {
    method: "POST",
    body: { bytes: file.size, filename: file.name, mime_type: mimeFor(file, purpose), purpose },
  });
  return sendFrom(session.id, file, 0, onProgress, onRetry);
}

// Unfinished uploads (left by a closed tab, a crash...): resume one by choosing the same
// file again (its size must match; the server keeps what it received), or cancel it.
function OpenUploads({ refreshed, onChanged }) {
  const [uploads, setUploads] = useState(null);
  const [error, setError] = useState(null);
  const [resuming, setResuming] = useState(null);

  useEffect(() => {
    api("/v1/uploads").then((list) => setUploads(list.data)).catch(setError);
  }, [refreshed]);

  async function resume(upload, file) {
    if (!file) return;
    if (file.size !== upload.bytes) {
      setError(`${file.name} has ${number.format(file.size)} bytes; this upload is of ${number.format(upload.bytes)}: choose the same file`);
      return;
    }
    setError(null);
    setResuming({ id: upload.upload_id, sent: upload.offset });
    try {
      const status = await api(`/v1/uploads/${encodeURIComponent(upload.upload_id)}`);
      await sendFrom(upload.upload_id, file, status.offset, (sent) => setResuming({ id: upload.upload_id, sent }), () => {});
      onChanged();
    } catch (err) {
      setError(err);
    } finally {
      setResuming(null);
    }
  }

  async function cancel(upload) {
    if (!confirm(`Cancel the upload of ${upload.filename}? What was received is deleted.`)) return;
    try {
      await api(`/v1/uploads/${encodeURIComponent(upload.upload_id)}`, { method: "DELETE" });
      onChanged();
    } catch (err) {
      setError(err);
    }
  }

  if (!uploads || uploads.length === 0) return error ? html`<${ErrorMessage} error=${error} />` : null;
  return html`<section class="card" aria-labelledby="open-uploads-title">
    <h2 id="open-uploads-title">Unfinished uploads</h2>
    <${ErrorMessage} error=${error} />
    <${TableRegion} label="Unfinished uploads">
      <table id="open-uploads-table">
        <thead><tr><th scope="col">File</th><th scope="col">Purpose</th><th scope="col">Received</th>
          <th scope="col">Expires</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
        <tbody>${uploads.map((u) => {
          const sent = resuming && resuming.id === u.upload_id ? resuming.sent : u.offset;
          const percent = Math.floor((100 * sent) / u.bytes);
          const inputId = `resume-${u.upload_id}`;
          return html`<tr>
            <th scope="row">${u.filename}</th><td>${u.purpose}</td>
            <td><progress max="100" value=${percent} aria-label=${`${u.filename} received`}>${percent}%</progress>
              <span class="hint">${number.format(sent)} of ${number.format(u.bytes)} bytes</span></td>
            <td><${When} value=${new Date(u.expires_at * 1000).toISOString()} /></td>
            <td class="actions">
              <button type="button" class="secondary small" disabled=${Boolean(resuming)}
                onClick=${() => document.getElementById(inputId).click()}>Resume…<span class="visually-hidden"> ${u.filename}: choose the same file</span></button>
              <input id=${inputId} hidden type="file" aria-label=${`Resume ${u.filename} with file`}
                onChange=${(e) => resume(u, e.currentTarget.files[0])} />
              <button type="button" class="secondary small" onClick=${() => cancel(u)}>Cancel<span class="visually-hidden"> upload of ${u.filename}</span></button>
            </td></tr>`;
        })}</tbody>
      </table>
    <//>
  </section>`;
}

function UploadForm({ onUploaded }) {
  const [file, setFile] = useState(null);
  const [purpose, setPurpose] = useState(PURPOSES[0].value);
  const [progress, setProgress] = useState(null);
  const [note, setNote] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  async function submit(event) {
    event.preventDefault();
    if (!file) return;
    setBusy(true);
    setError(null);
    setNote(null);
    setProgress({ sent: 0, total: file.size });
    try {
      const fileId = await uploadFile(
        file,
        purpose,
        (sent, total) => {
          setProgress({ sent, total });
          setNote(null);
        },
        (err) => setNote(`Connection problem (${err.message}); resuming from the server's offset…`),
      );
      onUploaded(fileId);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  const percent = progress && progress.total ? Math.floor((100 * progress.sent) / progress.total) : 0;
  return html`<form class="card form-grid" onSubmit=${submit} aria-labelledby="upload-title">
    <h2 id="upload-title">Upload a file</h2>
    <div class="field">
      <label for="upload-file">File</label>
      <input id="upload-file" type="file" required onChange=${(e) => setFile(e.currentTarget.files[0] || null)} />
    </div>
    <div class="field">
      <label for="upload-purpose">Purpose</label>
      <select id="upload-purpose" value=${purpose} onChange=${(e) => setPurpose(e.currentTarget.value)}>
        ${PURPOSES.map((p) => html`<option value=${p.value}>${p.label}</option>`)}
      </select>
    </div>
    <button type="submit" disabled=${busy || !file}>${busy ? "Uploading…" : "Upload"}</button>
    ${progress &&
    html`<div class="field">
      <label for="upload-progress">Progress</label>
      <progress id="upload-progress" max="100" value=${percent}>${percent}%</progress>
      <p class="hint" aria-live="polite">${number.format(progress.sent)} of ${number.format(progress.total)} bytes (${percent}%)</p>
    </div>`}
    ${note && html`<p class="hint" role="status">${note}</p>`}
    <${ErrorMessage} error=${error} />
  </form>`;
}

async function firstRows(fileId) {
  // Only the beginning: the download is cut once enough bytes arrived.
  const controller = new AbortController();
  const response = await fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, {
    headers: { Authorization: `Bearer ${storedKey.get() ?? ""}` },
    signal: controller.signal,
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.getReader();
  const chunks = [];
  let size = 0;
  while (size < PREVIEW_BYTES) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    size += value.length;
  }
  controller.abort();
  const text = new TextDecoder().decode(await new Blob(chunks).arrayBuffer());
  return text.split("\n").filter((line) => line.trim()).slice(0, PREVIEW_ROWS);
}

function Preview({ file, onClose }) {
  const [rows, setRows] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    firstRows(file.id).then(setRows).catch(setError);
  }, [file.id]);
  return html`<section class="card" aria-labelledby="preview-title">
    <h2 id="preview-title">First rows of ${file.filename}</h2>
    <${ErrorMessage} error=${error} />
    ${rows === null && !error && html`<p aria-live="polite">Loading…</p>`}
    ${rows && html`<ol class="preview-rows">${rows.map((row) => html`<li><pre>${row}</pre></li>`)}</ol>`}
    <button type="button" class="secondary" onClick=${onClose}>Close</button>
  </section>`;
}

function statusText(file) {
  if (file.status === "error") return html`<span class="badge error">error</span> ${file.status_details}`;
  return html`<span class=${`badge ${file.status}`}>${file.status}</span>`;
}

export function DatasetsPage() {
  const [files, setFiles] = useState(null);
  const [error, setError] = useState(null);
  const [preview, setPreview] = useState(null);
  const [refreshed, setRefreshed] = useState(0);

  useEffect(() => {
    api(`/v1/files${query({ limit: 100 })}`)
      .then((list) => {
        setFiles(list.data);
        setError(null);
      })
      .catch(setError);
  }, [refreshed]);

  async function remove(file) {
    if (!confirm(`Delete ${file.filename}? This cannot be undone.`)) return;
    try {
      await api(`/v1/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
      if (preview && preview.id === file.id) setPreview(null);
      setRefreshed(refreshed + 1);
    } catch (err) {
      setError(err);
    }
  }

  return html`
    <div class="page-head">
      <h1>Datasets</h1>
      <p class="lede">Your team's files: fine-tuning and evaluation datasets are checked line by line when their upload completes.</p>
    </div>
    <${UploadForm} onUploaded=${() => setRefreshed(refreshed + 1)} />
    <${OpenUploads} refreshed=${refreshed} onChanged=${() => setRefreshed(refreshed + 1)} />
    ${preview && html`<${Preview} file=${preview} onClose=${() => setPreview(null)} />`}
    <section class="card" aria-labelledby="files-title">
      <h2 id="files-title">Files</h2>
      <${ErrorMessage} error=${error} />
      ${files && files.length === 0 && html`<p class="muted">No files yet.</p>`}
      ${files && files.length > 0 &&
      html`<${TableRegion} label="Files">
        <table id="files-table">
          <thead><tr><th scope="col">File</th><th scope="col">Purpose</th><th scope="col" class="num">Bytes</th>
            <th scope="col">Status</th><th scope="col">Uploaded</th><th scope="col">sha256</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
          <tbody>${files.map(
            (f) => html`<tr>
              <th scope="row">${f.filename}</th><td>${f.purpose}</td><td class="num">${number.format(f.bytes)}</td>
              <td>${statusText(f)}</td><td><${When} value=${new Date(f.created_at * 1000).toISOString()} /></td>
              <td><code title=${f.sha256 || ""}>${f.sha256 ? f.sha256.slice(0, 12) : "—"}</code></td>
              <td class="actions">
                <button type="button" class="secondary small" onClick=${() => setPreview(f)}>Inspect<span class="visually-hidden"> ${f.filename}</span></button>
                <button type="button" class="secondary small" onClick=${() => remove(f)}>Delete<span class="visually-hidden"> ${f.filename}</span></button>
              </td></tr>`,
          )}</tbody>
        </table>
      <//>`}
    </section>`;
}
