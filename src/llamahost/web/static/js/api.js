// Calls to llamahost's HTTP APIs, exactly as a script would make them: the key goes in
// `Authorization: Bearer`, errors come back as {"error": {type, message, param}}.

const KEY_STORAGE = "llamahost.apiKey";

// Roles: an operator key administers every team, an admin key its own team (both through
// /admin/v1, which the server scopes), a member key uses /team/v1.
const RANK = { member: 0, admin: 1, operator: 2 };
export const isAdmin = (me) => RANK[me.role] >= RANK.admin;
export const isOperator = (me) => me.role === "operator";
// A key may revoke keys of its own role or below.
export const mayRevoke = (me, apiKey) => RANK[me.role] >= RANK[apiKey.role];

// sessionStorage: the key lives as long as this tab, never in a cookie or on disk for
// other tabs; closing the tab signs out.
export const storedKey = {
  get: () => sessionStorage.getItem(KEY_STORAGE),
  set: (key) => sessionStorage.setItem(KEY_STORAGE, key),
  clear: () => sessionStorage.removeItem(KEY_STORAGE),
};

export class ApiError extends Error {
  constructor(status, body) {
    const error = body && body.error ? body.error : null;
    super(error && error.message ? error.message : `HTTP ${status}`);
    this.status = status;
    this.type = error ? error.type : null;
    this.param = error ? error.param : null;
    this.categories = error ? error.categories : null;
  }
}

function headers(key, json) {
  const result = { Authorization: `Bearer ${key ?? storedKey.get() ?? ""}` };
  if (json) result["Content-Type"] = "application/json";
  return result;
}

export async function api(path, { method = "GET", body, key, signal } = {}) {
  const response = await fetch(path, {
    method,
    headers: headers(key, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export function query(params) {
  const entries = Object.entries(params).filter(([, value]) => value !== undefined && value !== null && value !== "");
  return entries.length ? `?${new URLSearchParams(entries)}` : "";
}

// Server-sent events of a POST (EventSource can only GET): yields {event, data} per event,
// `event` "message" unless the server named it (llamahost names only "error").
async function* serverSentEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      let event = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

// A streamed native chat completion: yields the `event` objects of the chunks
// (start, progress with delta.text, complete, metrics); an error event is thrown.
export async function* streamChat(body, { signal } = {}) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: headers(null, true),
    body: JSON.stringify({ ...body, stream: true }),
    signal,
  });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  for await (const { event, data } of serverSentEvents(response)) {
    if (event === "error") throw new ApiError(500, data);
    yield data.event;
  }
}
