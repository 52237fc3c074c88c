// Usage: requests, tokens and rate-limit rejections over time per model, top end users,
// and the limits in force. Operator keys read /admin/v1 (any team or all), admin keys
// /admin/v1 for their team, member keys /team/v1 (their team).
import { html, useEffect, useState } from "../../vendor/preact-htm.js";
import { api, isAdmin, isOperator, query } from "../api.js";
import { StackedBars } from "../charts.js";
import { ErrorMessage, number, TableRegion } from "../ui.js";

const RANGES = [
  { value: "1h", label: "Last hour", bucket: "1m" },
  { value: "24h", label: "Last 24 hours", bucket: "1h" },
  { value: "7d", label: "Last 7 days", bucket: "6h" },
  { value: "30d", label: "Last 30 days", bucket: "1d" },
];

// The summary lists only buckets with records; charts want every bucket of the range.
function chartData(summary, metric) {
  const step = summary.bucket_seconds * 1000;
  const first = Math.floor(Date.parse(summary.since) / step) * step;
  const end = Date.parse(summary.until);
  const starts = [];
  for (let t = first; t < end; t += step) starts.push(t);
  const index = new Map(starts.map((t, i) => [t, i]));
  const models = summary.models.map((m) => m.model);
  const series = models.map((name, i) => ({ name, index: i, values: starts.map(() => 0) }));
  const byName = new Map(series.map((s) => [s.name, s]));
  for (const bucket of summary.buckets) {
    const i = index.get(Date.parse(bucket.start));
    if (i !== undefined) byName.get(bucket.model).values[i] += bucket[metric];
  }
  return { starts, series: series.filter((s) => s.values.some(Boolean)) };
}

function Stat({ label, value, id }) {
  return html`<div class="stat"><dt>${label}</dt><dd id=${id}>${number.format(value)}</dd></div>`;
}

function LimitsTable({ limits }) {
  if (!limits) return null;
  if (!limits.enabled) return html`<p>Rate limits are off on this server (<code>[limits] enabled = false</code>).</p>`;
  if (limits.team !== undefined) {
    return html`<${TableRegion} label="Current limits">
      <table id="limits-table">
        <caption>Team ${limits.team}, per model (aliases share their model's limits)</caption>
        <thead><tr><th scope="col">Model</th><th scope="col" class="num">Requests / min</th><th scope="col" class="num">Tokens / min</th></tr></thead>
        <tbody>${limits.data.map(
          (l) => html`<tr><th scope="row">${l.model}</th><td class="num">${number.format(l.rpm)}</td><td class="num">${number.format(l.tpm)}</td></tr>`,
        )}</tbody>
      </table>
    <//>`;
  }
  // Every team (operator, no team chosen): the server defaults and what teams have set.
  const { rpm, tpm } = limits.defaults;
  return html`<p>Server defaults: <strong>${number.format(rpm)}</strong> requests and <strong>${number.format(tpm)}</strong> tokens per minute, per team and model.</p>
    ${limits.data.length === 0
      ? html`<p class="muted">No team has limits of its own.</p>`
      : html`<${TableRegion} label="Limits set by teams">
          <table id="limits-table">
            <caption>Set per team (empty: inherited)</caption>
            <thead><tr><th scope="col">Team</th><th scope="col">Model</th><th scope="col" class="num">Requests / min</th><th scope="col" class="num">Tokens / min</th></tr></thead>
            <tbody>${limits.data.map(
              (l) => html`<tr><td>${l.team}</td><td>${l.model || html`<span class="muted">every model</span>`}</td>
                <td class="num">${l.rpm === null ? "—" : number.format(l.rpm)}</td>
                <td class="num">${l.tpm === null ? "—" : number.format(l.tpm)}</td></tr>`,
            )}</tbody>
          </table>
        <//>`}`;
}

export function UsagePage({ me }) {
  const admin = isAdmin(me);
  const operator = isOperator(me);
  const [teams, setTeams] = useState([]);
  const [team, setTeam] = useState(operator ? "" : me.team);
  const [range, setRange] = useState(RANGES[1].value);
  const [summary, setSummary] = useState(null);
  const [limits, setLimits] = useState(null);
  const [error, setError] = useState(null);
  const [loading, setLoading] = useState(false);
  const [refreshed, setRefreshed] = useState(0);

  useEffect(() => {
    if (operator) api("/admin/v1/teams").then((list) => setTeams(list.data)).catch(setError);
  }, []);

  useEffect(() => {
    const { bucket } = RANGES.find((r) => r.value === range);
    const params = { since: range, bucket, top_users: 10 };
    setLoading(true);
    const requests = admin
      ? [
          api(`/admin/v1/usage/summary${query({ ...params, team })}`),
          team ? api(`/admin/v1/limits/effective${query({ team })}`) : api("/admin/v1/limits"),
        ]
      : [api(`/team/v1/usage/summary${query(params)}`), api("/team/v1/limits")];
    Promise.all(requests)
      .then(([usage, limitList]) => {
        setSummary(usage);
        setLimits(limitList);
        setError(null);
      })
      .catch(setError)
      .finally(() => setLoading(false));
  }, [team, range, refreshed]);

  const requests = summary && chartData(summary, "requests");
  const tokens = summary && chartData(summary, "total_tokens");
  const rejected = summary && chartData(summary, "rate_limited");
  const scope = team ? `team ${team}` : "every team";

  return html`
    <div class="page-head">
      <h1>Usage</h1>
      <p class="lede">Chat requests of ${scope}, from the usage records (every request, however it ended).</p>
    </div>
    <form class="card filters-bar" onSubmit=${(e) => { e.preventDefault(); setRefreshed(refreshed + 1); }}>
      ${operator &&
      html`<div class="field">
        <label for="usage-team">Team</label>
        <select id="usage-team" value=${team} onChange=${(e) => setTeam(e.currentTarget.value)}>
          <option value="">All teams</option>
          ${teams.map((t) => html`<option value=${t.name}>${t.name}</option>`)}
        </select>
      </div>`}
      <div class="field">
        <label for="usage-range">Range</label>
        <select id="usage-range" value=${range} onChange=${(e) => setRange(e.currentTarget.value)}>
          ${RANGES.map((r) => html`<option value=${r.value}>${r.label}</option>`)}
        </select>
      </div>
      <div class="actions"><button type="submit" class="secondary" disabled=${loading}>${loading ? "Loading…" : "Refresh"}</button></div>
    </form>
    <${ErrorMessage} error=${error} />
    ${summary &&
    html`<section class="card" aria-labelledby="totals-title" aria-busy=${loading ? "true" : "false"}>
        <h2 id="totals-title">Totals</h2>
        <dl class="stats">
          <${Stat} label="Requests" value=${summary.totals.requests} id="total-requests" />
          <${Stat} label="Tokens" value=${summary.totals.total_tokens} id="total-tokens" />
          <${Stat} label="Prompt tokens" value=${summary.totals.prompt_tokens} id="total-prompt-tokens" />
          <${Stat} label="Completion tokens" value=${summary.totals.completion_tokens} id="total-completion-tokens" />
          <${Stat} label="Rate-limit rejections" value=${summary.totals.rate_limited} id="total-rate-limited" />
        </dl>
      </section>
      <section class="card" aria-labelledby="charts-title">
        <h2 id="charts-title">Over time, per model</h2>
        <div class="charts">
          <${StackedBars} id="chart-requests" title="Requests" unit="requests" starts=${requests.starts}
            bucketSeconds=${summary.bucket_seconds} series=${requests.series} />
          <${StackedBars} id="chart-tokens" title="Tokens" unit="tokens" starts=${tokens.starts}
            bucketSeconds=${summary.bucket_seconds} series=${tokens.series} />
          ${summary.totals.rate_limited > 0 &&
          html`<${StackedBars} id="chart-rejections" title="Rate-limit rejections" unit="rejections"
            starts=${rejected.starts} bucketSeconds=${summary.bucket_seconds} series=${rejected.series} />`}
        </div>
        ${summary.totals.rate_limited === 0 && html`<p class="muted">No request was refused by a rate limit in this range.</p>`}
      </section>
      <div class="two-columns">
        <section class="card" aria-labelledby="models-title">
          <h2 id="models-title">By model</h2>
          <${TableRegion} label="Usage by model">
            <table id="models-table">
              <thead><tr><th scope="col">Model (as requested)</th><th scope="col" class="num">Requests</th><th scope="col" class="num">Tokens</th>
                <th scope="col" class="num">Rejected</th></tr></thead>
              <tbody>
                ${summary.models.length === 0 && html`<tr><td colspan="4" class="muted">No requests in this range.</td></tr>`}
                ${summary.models.map(
                  (m) => html`<tr><th scope="row">${m.model}</th><td class="num">${number.format(m.requests)}</td>
                    <td class="num">${number.format(m.total_tokens)}</td><td class="num">${number.format(m.rate_limited)}</td></tr>`,
                )}
              </tbody>
            </table>
          <//>
        </section>
        <section class="card" aria-labelledby="users-title">
          <h2 id="users-title">Top end users</h2>
          <p class="hint">By the requests' <code>user</code> field; requests without one are not listed.</p>
          <${TableRegion} label="Top end users">
            <table id="users-table">
              <thead><tr><th scope="col">User</th><th scope="col" class="num">Requests</th><th scope="col" class="num">Tokens</th></tr></thead>
              <tbody>
                ${summary.users.length === 0 && html`<tr><td colspan="3" class="muted">No requests with a user in this range.</td></tr>`}
                ${summary.users.map(
                  (u) => html`<tr><th scope="row">${u.user}</th><td class="num">${number.format(u.requests)}</td>
                    <td class="num">${number.format(u.total_tokens)}</td></tr>`,
                )}
              </tbody>
            </table>
          <//>
        </section>
      </div>
      <section class="card" aria-labelledby="limits-title">
        <h2 id="limits-title">Current limits</h2>
        <${LimitsTable} limits=${limits} />
      </section>`}`;
}
