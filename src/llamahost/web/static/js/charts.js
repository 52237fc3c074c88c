// A stacked bar chart over time as inline SVG: a few dozen lines, where a charting
// library would be 40+ KB for the one chart type the Usage page needs. Each chart has
// a text summary for screen readers and its numbers as a table behind a disclosure.
import { html, useEffect, useRef, useState } from "../vendor/preact-htm.js";
import { number, TableRegion } from "./ui.js";

const DEFAULT_WIDTH = 720;
const HEIGHT = 220;
const PAD = { top: 12, right: 12, bottom: 28, left: 56 };
export const SERIES_CLASSES = 8; // .series-0 … .series-7 in the stylesheet

function niceMax(value) {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((f) => f * magnitude >= value);
  return step * magnitude;
}

export function bucketLabel(ms, bucketSeconds) {
  const date = new Date(ms);
  if (bucketSeconds >= 86400) return date.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  if (bucketSeconds >= 3600 * 6) {
    return date.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

// starts: bucket start times (ms); series: [{name, index, values: number[] aligned with starts}]
// The drawing is as wide in SVG units as it is on screen, so its labels keep their
// size from phone to laptop instead of being scaled with the picture.
export function useWidth() {
  const ref = useRef(null);
  const [width, setWidth] = useState(DEFAULT_WIDTH);
  useEffect(() => {
    const observer = new ResizeObserver(([entry]) => setWidth(Math.max(240, Math.round(entry.contentRect.width))));
    observer.observe(ref.current);
    return () => observer.disconnect();
  }, []);
  return [ref, width];
}

export function StackedBars({ id, title, unit, starts, bucketSeconds, series }) {
  const [ref, width] = useWidth();
  const totals = starts.map((_, i) => series.reduce((sum, s) => sum + s.values[i], 0));
  const grand = totals.reduce((a, b) => a + b, 0);
  const max = niceMax(Math.max(0, ...totals));
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotW / Math.max(1, starts.length);
  const barW = Math.max(1, slot * 0.8);
  const y = (v) => PAD.top + plotH - (v / max) * plotH;
  const tickEvery = Math.max(1, Math.ceil(starts.length / Math.max(2, Math.floor(width / 110))));
  const peak = totals.indexOf(Math.max(...totals));
  const summary = grand
    ? `${number.format(grand)} ${unit} in total across ${series.length} model${series.length === 1 ? "" : "s"}; ` +
      `the busiest interval, starting ${bucketLabel(starts[peak], bucketSeconds)}, had ${number.format(totals[peak])}.`
    : `No ${unit} in this range.`;

  return html`<figure class="chart" id=${id} ref=${ref}>
    <figcaption><h3 id=${`${id}-title`}>${title}</h3></figcaption>
    <svg viewBox=${`0 0 ${width} ${HEIGHT}`} role="img" aria-labelledby=${`${id}-title ${id}-desc`}>
      <desc id=${`${id}-desc`}>${summary}</desc>
      ${[0, 0.5, 1].map(
        (f) => html`<g class="grid">
          <line x1=${PAD.left} x2=${width - PAD.right} y1=${y(max * f)} y2=${y(max * f)} />
          <text x=${PAD.left - 6} y=${y(max * f) + 4} text-anchor="end">${number.format(max * f)}</text>
        </g>`,
      )}
      ${starts.map((start, i) => {
        let base = 0;
        return series.map((s) => {
          const value = s.values[i];
          if (!value) return null;
          const top = y(base + value);
          const rect = html`<rect class=${`series-${s.index % SERIES_CLASSES}`} x=${PAD.left + i * slot + (slot - barW) / 2}
            y=${top} width=${barW} height=${Math.max(0.5, y(base) - top)}>
            <title>${`${s.name}, ${bucketLabel(start, bucketSeconds)}: ${number.format(value)} ${unit}`}</title>
          </rect>`;
          base += value;
          return rect;
        });
      })}
      ${starts.map((start, i) =>
        i % tickEvery === 0
          ? html`<text class="tick" x=${PAD.left + i * slot + slot / 2} y=${HEIGHT - 8} text-anchor="middle">
              ${bucketLabel(start, bucketSeconds)}</text>`
          : null,
      )}
    </svg>
    <ul class="legend" aria-label=${`${title}: models`}>
      ${series.map((s) => html`<li><span class=${`swatch series-${s.index % SERIES_CLASSES}`} aria-hidden="true"></span>${s.name}</li>`)}
    </ul>
    <details>
      <summary>${title} as a table</summary>
      <${TableRegion} label=${`${title} table`}>
        <table>
          <thead><tr><th scope="col">Interval starting</th>${series.map((s) => html`<th scope="col">${s.name}</th>`)}</tr></thead>
          <tbody>
            ${starts.map((start, i) =>
              totals[i]
                ? html`<tr><th scope="row">${bucketLabel(start, bucketSeconds)}</th>
                    ${series.map((s) => html`<td class="num">${number.format(s.values[i])}</td>`)}</tr>`
                : null,
            )}
          </tbody>
        </table>
      <//>
    </details>
  </figure>`;
}

// Lines over steps as inline SVG (the Fine-tuning page's learning curve): each series is
// [{x, y}] points, drawn as a line when it has many and as dots where it is sparse (a
// validation loss measured once per epoch). Same conventions as StackedBars: as wide as
// on screen, a text summary for screen readers, the numbers as a table behind a disclosure.
export function LineChart({ id, title, xLabel, series, summary, format = (v) => v.toFixed(3) }) {
  const [ref, width] = useWidth();
  const points = series.flatMap((s) => s.points);
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const xMin = Math.min(...xs, 1);
  const xMax = Math.max(...xs, xMin + 1);
  const yMax = niceMax(Math.max(0, ...ys));
  const plotW = width - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const x = (v) => PAD.left + ((v - xMin) / (xMax - xMin)) * plotW;
  const y = (v) => PAD.top + plotH - (v / yMax) * plotH;
  const ticks = [...new Set([xMin, Math.round((xMin + xMax) / 2), xMax])];
  const rows = [...new Set(xs)].sort((a, b) => a - b);
  const byX = series.map((s) => new Map(s.points.map((p) => [p.x, p.y])));
  return html`<figure class="chart line-chart" id=${id} ref=${ref}>
    <figcaption><h3 id=${`${id}-title`}>${title}</h3></figcaption>
    <svg viewBox=${`0 0 ${width} ${HEIGHT}`} role="img" aria-labelledby=${`${id}-title ${id}-desc`}>
      <desc id=${`${id}-desc`}>${summary}</desc>
      ${[0, 0.5, 1].map(
        (f) => html`<g class="grid">
          <line x1=${PAD.left} x2=${width - PAD.right} y1=${y(yMax * f)} y2=${y(yMax * f)} />
          <text x=${PAD.left - 6} y=${y(yMax * f) + 4} text-anchor="end">${format(yMax * f)}</text>
        </g>`,
      )}
      ${series.map((s) => html`<g class=${`series series-${s.index % SERIES_CLASSES}`}>
        ${s.points.length > 1 &&
        html`<polyline fill="none" points=${s.points.map((p) => `${x(p.x)},${y(p.y)}`).join(" ")} />`}
        ${s.points.map((p) => html`<circle cx=${x(p.x)} cy=${y(p.y)} r=${s.points.length > 40 ? 1.5 : 3}>
          <title>${`${s.name}, ${xLabel.toLowerCase()} ${p.x}: ${format(p.y)}`}</title></circle>`)}
      </g>`)}
      ${ticks.map((t, i) => html`<text class="tick" x=${x(t)} y=${HEIGHT - 8}
        text-anchor=${i === ticks.length - 1 && ticks.length > 1 ? "end" : "middle"}>${`${xLabel} ${t}`}</text>`)}
    </svg>
    <ul class="legend" aria-label=${`${title}: series`}>
      ${series.map((s) => html`<li><span class=${`swatch series-${s.index % SERIES_CLASSES}`} aria-hidden="true"></span>${s.name}</li>`)}
    </ul>
    <details>
      <summary>${title} as a table</summary>
      <${TableRegion} label=${`${title} table`}>
        <table>
          <thead><tr><th scope="col">${xLabel}</th>${series.map((s) => html`<th scope="col" class="num">${s.name}</th>`)}</tr></thead>
          <tbody>
            ${rows.map((step) => html`<tr><th scope="row">${step}</th>
              ${byX.map((values) => html`<td class="num">${values.has(step) ? format(values.get(step)) : ""}</td>`)}</tr>`)}
          </tbody>
        </table>
      <//>
    </details>
  </figure>`;
}
