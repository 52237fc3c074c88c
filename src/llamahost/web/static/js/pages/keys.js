// API keys: list, create (the secret is shown once), revoke.
// Operator and admin keys use /admin/v1 (every team, or their own); member keys /team/v1 (their own team).
import { html, useEffect, useRef, useState } from "../../vendor/preact-htm.js";
import { api, isAdmin, isOperator, mayRevoke, query } from "../api.js";
import { CopyButton, ErrorMessage, TableRegion, When, useFocusOnMount } from "../ui.js";

function keyStatus(key) {
  if (key.revoked_at) return "revoked";
  if (key.expires_at && new Date(key.expires_at) <= new Date()) return "expired";
  return "active";
}

function NewSecret({ created, onDone }) {
  const heading = useFocusOnMount();
  return html`<section class="card secret" aria-labelledby="new-key-title">
    <h2 id="new-key-title" tabindex="-1" ref=${heading}>New key for team ${created.team}</h2>
    <p><strong>Copy it now: it is shown only this once.</strong> llamahost keeps only its hash and cannot show it again.</p>
    <div class="secret-row">
      <label class="visually-hidden" for="new-key-secret">New API key</label>
      <input id="new-key-secret" readonly value=${created.key} spellcheck="false" onFocus=${(e) => e.currentTarget.select()} />
      <${CopyButton} text=${created.key} id="new-key-secret" label="Copy key" />
    </div>
    <button type="button" onClick=${onDone}>Done, I have stored it</button>
  </section>`;
}

function CreateKeyForm({ me, teams, onCreated }) {
  const admin = isAdmin(me);
  const [name, setName] = useState("");
  const [team, setTeam] = useState(me.team);
  const [role, setRole] = useState("member");
  const [days, setDays] = useState("");
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    const body = { name: name.trim() || null };
    if (days !== "") body.expires_in_days = Number(days);
    try {
      const created = admin
        ? await api("/admin/v1/keys", { method: "POST", body: { ...body, team: team.trim(), role } })
        : await api("/team/v1/keys", { method: "POST", body });
      setName("");
      setDays("");
      onCreated(created);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  }

  return html`<form class="card form-grid" onSubmit=${submit} aria-labelledby="create-key-title">
    <h2 id="create-key-title">Create a key</h2>
    <div class="field">
      <label for="key-name">Label</label>
      <input id="key-name" maxlength="256" value=${name} onInput=${(e) => setName(e.currentTarget.value)}
        placeholder="e.g. laptop, ci" />
    </div>
    ${admin &&
    html`<div class="field">
        <label for="key-team">Team</label>
        <input id="key-team" list="known-teams" required maxlength="128" value=${team}
          onInput=${(e) => setTeam(e.currentTarget.value)} aria-describedby="key-team-hint" />
        <datalist id="known-teams">${teams.map((t) => html`<option value=${t.name} />`)}</datalist>
        <p class="hint" id="key-team-hint">${isOperator(me)
          ? "A new name creates the team."
          : "Your team: an admin key makes keys for its own team only."}</p>
      </div>
      <div class="field">
        <label for="key-role">Role</label>
        <select id="key-role" value=${role} onChange=${(e) => setRole(e.currentTarget.value)}>
          <option value="member">member</option>
          <option value="admin">admin (administers its team)</option>
          ${isOperator(me) && html`<option value="operator">operator (administers every team)</option>`}
        </select>
      </div>`}
    <div class="field">
      <label for="key-expires">Expires after (days)</label>
      <input id="key-expires" type="number" min="1" step="1" inputmode="numeric" value=${days}
        onInput=${(e) => setDays(e.currentTarget.value)} aria-describedby="key-expires-hint" />
      <p class="hint" id="key-expires-hint">Empty: never expires.</p>
    </div>
    <${ErrorMessage} error=${error} />
    <div class="actions"><button type="submit" disabled=${busy}>${busy ? "Creating…" : "Create key"}</button></div>
  </form>`;
}

function RevokeCell({ me, apiKey, onRevoked }) {
  const [confirming, setConfirming] = useState(false);
  const [cancelled, setCancelled] = useState(false);
  const [error, setError] = useState(null);
  // Focus follows the question and, on Cancel, returns to the button that asked it.
  const confirmRef = useFocusWhen(confirming);
  const revokeRef = useFocusWhen(cancelled && !confirming);
  if (keyStatus(apiKey) !== "active") return html`<td></td>`;
  if (!mayRevoke(me, apiKey)) return html`<td><span class="muted">${apiKey.role} key</span></td>`;
  async function revoke() {
    try {
      const path = isAdmin(me) ? `/admin/v1/keys/${apiKey.id}` : `/team/v1/keys/${apiKey.id}`;
      onRevoked(await api(path, { method: "DELETE" }));
    } catch (err) {
      setError(err);
    }
  }
  if (!confirming) {
    return html`<td><button type="button" class="danger small" ref=${revokeRef}
      onClick=${() => { setCancelled(false); setConfirming(true); }}
      aria-label=${`Revoke ${apiKey.prefix}`}>Revoke</button></td>`;
  }
  return html`<td class="confirm">
    <span>Revoke ${apiKey.prefix}?</span>
    <button type="button" class="danger small" ref=${confirmRef} onClick=${revoke}>Yes, revoke</button>
    <button type="button" class="secondary small" onClick=${() => { setConfirming(false); setCancelled(true); }}>Cancel</button>
    <${ErrorMessage} error=${error} />
  </td>`;
}

function useFocusWhen(condition) {
  const ref = useRef(null);
  useEffect(() => {
    if (condition && ref.current) ref.current.focus();
  }, [condition]);
  return ref;
}

export function KeysPage({ me }) {
  const admin = isAdmin(me);
  const [keys, setKeys] = useState(null);
  const [teams, setTeams] = useState([]);
  const [teamFilter, setTeamFilter] = useState("");
  const [showRevoked, setShowRevoked] = useState(true);
  const [created, setCreated] = useState(null);
  const [status, setStatus] = useState("");
  const [error, setError] = useState(null);

  async function load() {
    try {
      if (admin) {
        const [keyList, teamList] = await Promise.all([
          api(`/admin/v1/keys${query({ team: teamFilter })}`),
          api("/admin/v1/teams"),
        ]);
        setKeys(keyList.data);
        setTeams(teamList.data);
      } else {
        setKeys((await api("/team/v1/keys")).data);
      }
      setError(null);
    } catch (err) {
      setError(err);
    }
  }
  useEffect(() => {
    load();
  }, [teamFilter]);

  function onCreated(key) {
    setCreated(key);
    setStatus(`Created key ${key.prefix}.`);
    load();
  }
  function onRevoked(key) {
    setStatus(`Revoked key ${key.prefix}. It is refused from now on.`);
    load();
  }

  const shown = (keys || []).filter((k) => showRevoked || keyStatus(k) === "active");
  return html`
    <div class="page-head">
      <h1>API keys</h1>
      <p class="lede">${isOperator(me) ? "Every team's keys. " : `Keys of team ${me.team}. `}Send a key as
        <code>Authorization: Bearer …</code>; it is never shown again after it is created.</p>
    </div>
    <p class="status" role="status">${status}</p>
    ${created && html`<${NewSecret} created=${created} onDone=${() => setCreated(null)} />`}
    <${CreateKeyForm} me=${me} teams=${teams} onCreated=${onCreated} />
    <section class="card" aria-labelledby="key-list-title">
      <div class="section-head">
        <h2 id="key-list-title">Keys</h2>
        <div class="filters">
          ${isOperator(me) &&
          html`<label for="key-team-filter">Filter by team</label>
            <select id="key-team-filter" value=${teamFilter} onChange=${(e) => setTeamFilter(e.currentTarget.value)}>
              <option value="">All teams</option>
              ${teams.map((t) => html`<option value=${t.name}>${t.name}</option>`)}
            </select>`}
          <label class="inline"><input type="checkbox" checked=${showRevoked}
            onChange=${(e) => setShowRevoked(e.currentTarget.checked)} /> Show revoked and expired</label>
        </div>
      </div>
      <${ErrorMessage} error=${error} />
      ${keys === null && !error && html`<p aria-live="polite">Loading keys…</p>`}
      ${keys !== null &&
      html`<${TableRegion} label="API keys">
        <table class="keys">
          <thead><tr>
            <th scope="col">Prefix</th>${admin && html`<th scope="col">Team</th>`}<th scope="col">Label</th>
            <th scope="col">Role</th><th scope="col">Created</th><th scope="col">Last used</th>
            <th scope="col">Status</th><th scope="col"><span class="visually-hidden">Actions</span></th>
          </tr></thead>
          <tbody>
            ${shown.length === 0 && html`<tr><td colspan="8" class="muted">No keys.</td></tr>`}
            ${shown.map(
              (k) => html`<tr key=${k.id} data-key-id=${k.id}>
                <td><code>${k.prefix}</code></td>${admin && html`<td>${k.team}</td>`}
                <td>${k.name || html`<span class="muted">—</span>`}</td>
                <td>${k.role}</td>
                <td><${When} value=${k.created_at} /></td>
                <td><${When} value=${k.last_used_at} /></td>
                <td><span class=${`badge ${keyStatus(k)}`}>${keyStatus(k)}</span></td>
                <${RevokeCell} me=${me} apiKey=${k} onRevoked=${onRevoked} />
              </tr>`,
            )}
          </tbody>
        </table>
      <//>`}
    </section>`;
}
