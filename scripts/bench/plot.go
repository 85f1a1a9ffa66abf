package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// drawCurve draws the cost curve into a PNG at path: three panels, one above the other (CPU per
// task, RSS per node, placement latency), each against the tasks in the state on a log axis (a
// point at 0 tasks is drawn at 1). gonum/plot rather than hand-drawn pixels: axes, log ticks,
// legends and aligned panels are what it does.
func drawCurve(path string, pts []curvePoint) error {
	if len(pts) == 0 {
		return errors.New("plot: no cost-curve points")
	}
	xy := func(y func(curvePoint) float64) plotter.XYs {
		out := make(plotter.XYs, len(pts))
		for i, p := range pts {
			out[i].X = max(float64(p.tasks), 1)
			out[i].Y = y(p)
		}
		return out
	}
	panel := func(title, ylabel string, lines ...any) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.X.Label.Text = "tasks in the state"
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.LogTicks{Prec: -1}
		p.Y.Label.Text = ylabel
		p.Y.Min = 0
		p.Add(plotter.NewGrid())
		p.Legend.Top, p.Legend.Left = true, true
		if err := plotutil.AddLinePoints(p, lines...); err != nil {
			return nil, err
		}
		return p, nil
	}
	cpu, err := panel("cluster CPU per task", "µs",
		"CPU per task", xy(func(p curvePoint) float64 { return float64(p.cpuPerTask.Microseconds()) }))
	if err != nil {
		return err
	}
	rss, err := panel("RSS per node (mean)", "MB",
		"RSS", xy(func(p curvePoint) float64 { return float64(p.rss) / 1e6 }))
	if err != nil {
		return err
	}
	place, err := panel("placement latency (submit → assigned)", "ms",
		"p50", xy(func(p curvePoint) float64 { return float64(p.place50.Microseconds()) / 1000 }),
		"p99", xy(func(p curvePoint) float64 { return float64(p.place99.Microseconds()) / 1000 }))
	if err != nil {
		return err
	}

	img := vgimg.New(6*vg.Inch, 9*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 3, Cols: 1, PadTop: vg.Points(6), PadBottom: vg.Points(6), PadY: vg.Points(12), PadLeft: vg.Points(6), PadRight: vg.Points(12)}
	plots := [][]*plot.Plot{{cpu}, {rss}, {place}}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("plot: write %s: %w", path, err)
	}
	return f.Close()
}
