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
function useWidth() {
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
