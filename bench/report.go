package bench

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/go-echarts/go-echarts/v2/charts"
	"github.com/go-echarts/go-echarts/v2/components"
	"github.com/go-echarts/go-echarts/v2/opts"

	"github.com/flashgate/flashgate/gateway/status"
)

// echartsJS is ECharts 5.6.0 (Apache-2.0, assets/ECHARTS-LICENSE), inlined
// into every report so it opens without network access.
//
//go:embed assets/echarts.min.js
var echartsJS []byte

// inlineAssetsHost is a placeholder go-echarts writes into script tags; the
// tag is then replaced by the embedded script.
const inlineAssetsHost = "flashgate-inline/"

// WriteJSON writes the result as indented JSON; keys are stable (structs in
// declaration order, maps sorted), so two runs diff line by line.
func (r *DropResult) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Table renders the final summary, per-campaign oracle figures and verdict.
func (r *DropResult) Table() string {
	var b strings.Builder
	m := r.Meta
	fmt.Fprintf(&b, "scenario %s  seed %d  run %s  commit %.12s  %s  GOMAXPROCS=%d  %s\n", m.Scenario, m.Seed, m.RunID, m.Commit, m.GoVersion, m.GOMAXPROCS, m.CPU)
	fmt.Fprintf(&b, "taps %d, retries %d\n", r.Taps, r.Retries)
	b.WriteString(r.Summary.Table("requests"))
	if o := r.Oracle; o != nil {
		fmt.Fprintf(&b, "\n%-14s %10s %10s %14s %13s %10s %12s\n", "campaign", "stock", "limit/user", "client grants", "redis grants", "stored", "missing dn.")
		for _, c := range o.Campaigns {
			fmt.Fprintf(&b, "%-14s %10d %10d %14d %13d %10d %12d\n", c.ID, c.Stock, c.PerUserLimit, c.ClientGranted, c.RedisGranted, c.Stored, c.MissingDownstream)
		}
		if o.OK {
			b.WriteString("\noracle: OK — no oversell, no duplicate grant, no per-user violation, every granted answer stored\n")
		} else {
			fmt.Fprintf(&b, "\noracle: %d VIOLATIONS\n", len(o.Violations))
			for _, v := range o.Violations {
				b.WriteString("  " + v + "\n")
			}
		}
	}
	return b.String()
}

// WriteHTML writes a self-contained report: target vs achieved rate,
// latency percentiles and outcomes over time, and the run's metadata.
func (r *DropResult) WriteHTML(path string) error {
	xs := make([]string, len(r.Series))
	for i, p := range r.Series {
		xs[i] = strconv.Itoa(p.Second) + "s"
	}
	init := opts.Initialization{AssetsHost: inlineAssetsHost, Width: "1100px", Height: "360px"}

	rate := charts.NewLine()
	rate.SetGlobalOptions(charts.WithInitializationOpts(init), charts.WithTitleOpts(opts.Title{Title: "Rate (requests/s)", Subtitle: "scheduled vs sent, by intended send second"}),
		charts.WithTooltipOpts(opts.Tooltip{Show: opts.Bool(true), Trigger: "axis"}), charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Top: "bottom"}))
	target, sent := make([]opts.LineData, len(r.Series)), make([]opts.LineData, len(r.Series))
	for i, p := range r.Series {
		target[i], sent[i] = opts.LineData{Value: int64(p.TargetRate)}, opts.LineData{Value: p.Sent}
	}
	rate.SetXAxis(xs).AddSeries("target", target).AddSeries("sent", sent)

	lat := charts.NewLine()
	lat.SetGlobalOptions(charts.WithInitializationOpts(init), charts.WithTitleOpts(opts.Title{Title: "Latency (ms)", Subtitle: "from intended send time"}),
		charts.WithTooltipOpts(opts.Tooltip{Show: opts.Bool(true), Trigger: "axis"}), charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Top: "bottom"}))
	p50, p99, pmax := make([]opts.LineData, len(r.Series)), make([]opts.LineData, len(r.Series)), make([]opts.LineData, len(r.Series))
	for i, p := range r.Series {
		p50[i], p99[i], pmax[i] = opts.LineData{Value: p.P50Ms}, opts.LineData{Value: p.P99Ms}, opts.LineData{Value: p.MaxMs}
	}
	lat.SetXAxis(xs).AddSeries("p50", p50).AddSeries("p99", p99).AddSeries("max", pmax)

	out := charts.NewBar()
	out.SetGlobalOptions(charts.WithInitializationOpts(init), charts.WithTitleOpts(opts.Title{Title: "Outcomes per second"}),
		charts.WithTooltipOpts(opts.Tooltip{Show: opts.Bool(true), Trigger: "axis"}), charts.WithLegendOpts(opts.Legend{Show: opts.Bool(true), Top: "bottom"}))
	out.SetXAxis(xs)
	for _, label := range r.outcomeLabels() {
		data := make([]opts.BarData, len(r.Series))
		for i, p := range r.Series {
			data[i] = opts.BarData{Value: p.Outcomes[label]}
		}
		out.AddSeries(label, data, charts.WithBarChartOpts(opts.BarChart{Stack: "outcomes"}))
	}

	page := components.NewPage()
	page.SetPageTitle("flashbench — " + r.Meta.Scenario)
	page.AssetsHost = inlineAssetsHost
	page.AddCharts(rate, lat, out)
	var buf bytes.Buffer
	if err := page.Render(&buf); err != nil {
		return fmt.Errorf("bench: report: %w", err)
	}
	html := buf.Bytes()
	tag := []byte(`<script src="` + inlineAssetsHost + `echarts.min.js"></script>`)
	if !bytes.Contains(html, tag) {
		return fmt.Errorf("bench: report: go-echarts did not reference %s", tag)
	}
	html = bytes.Replace(html, tag, append(append([]byte("<script>"), echartsJS...), "</script>"...), 1)
	summary := "<pre style=\"font-family:monospace;margin:16px\">" + htmlEscape(r.Table()) + "</pre>"
	html = bytes.Replace(html, []byte("<body>"), []byte("<body>\n"+summary), 1)
	return os.WriteFile(path, html, 0o644)
}

func (r *DropResult) outcomeLabels() []string {
	seen := map[string]bool{}
	for _, p := range r.Series {
		for k := range p.Outcomes {
			seen[k] = true
		}
	}
	var out []string
	for _, st := range status.All() {
		if seen[st.String()] {
			out = append(out, st.String())
			delete(seen, st.String())
		}
	}
	var rest []string
	for k := range seen {
		rest = append(rest, k)
	}
	sort.Strings(rest)
	return append(out, rest...)
}

func htmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
