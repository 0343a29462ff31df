import Foundation
import NewBieImage
import NewBieMetrics

/// grid.png: per case, the images of every config side by side under their labels, and under
/// each image its difference from the reference, |image - reference| times the gain.
enum PrecisionReportGrid {
    static let background: (UInt8, UInt8, UInt8) = (28, 28, 28)
    static let ink: (UInt8, UInt8, UInt8) = (235, 235, 235)
    static let failedInk: (UInt8, UInt8, UInt8) = (255, 110, 110)

    /// A gain that maps the 99th percentile of |image - reference| over every non-reference image
    /// to about 128 (1 ... 64; 8 when nothing differs).
    static func autoGain(images: [[RGBImage?]]) -> Int {
        guard let refs = images.first else { return 8 }
        var hist = [Int](repeating: 0, count: 256)
        var total = 0
        for row in images.dropFirst() {
            for (i, im) in row.enumerated() {
                guard let im = im, let r = refs[i], r.pixels.count == im.pixels.count else { continue }
                for k in im.pixels.indices { hist[abs(Int(im.pixels[k]) - Int(r.pixels[k]))] += 1 }
                total += im.pixels.count
            }
        }
        guard total > 0 else { return 8 }
        var seen = 0, p99 = 0
        for (d, n) in hist.enumerated() {
            seen += n
            if Double(seen) >= 0.99 * Double(total) { p99 = d; break }
        }
        return p99 == 0 ? 8 : max(1, min(64, 128 / p99))
    }

    static func make(report: PrecisionReport, images: [[RGBImage?]], gain: Int) -> RGBImage {
        let w = report.settings.width, h = report.settings.height
        let n = report.configs.count
        let scale = max(1, w / 256)
        let margin = 4 * scale
        let lineH = LabelFont.lineAdvance * scale
        let columns = max(1, w / (LabelFont.advance * scale))
        let labels = report.configs.map { c in
            LabelFont.wrap("\(c.index): \(c.spec)" + (c.isReference ? " (ref)" : c.error != nil ? " FAILED" : ""), columns: columns)
        }
        let labelLines = labels.map(\.count).max() ?? 1
        let gridW = margin + n * (w + margin)
        let block = lineH + labelLines * lineH + h + lineH + h + 2 * margin
        let gridH = margin + report.cases.count * block
        var px = [UInt8](repeating: 0, count: gridW * gridH * 3)
        for i in 0..<(gridW * gridH) { px[3 * i] = background.0; px[3 * i + 1] = background.1; px[3 * i + 2] = background.2 }

        func blit(_ im: RGBImage, x: Int, y: Int) {
            for row in 0..<im.height {
                let src = row * im.width * 3, dst = ((y + row) * gridW + x) * 3
                for k in 0..<(im.width * 3) { px[dst + k] = im.pixels[src + k] }
            }
        }
        func fill(x: Int, y: Int, color: (UInt8, UInt8, UInt8)) {
            for row in 0..<h { for col in 0..<w { let o = ((y + row) * gridW + x + col) * 3; px[o] = color.0; px[o + 1] = color.1; px[o + 2] = color.2 } }
        }
        func text(_ s: String, x: Int, y: Int, color: (UInt8, UInt8, UInt8) = ink) {
            LabelFont.draw(s, into: &px, width: gridW, height: gridH, x: x, y: y, scale: scale, color: color)
        }

        let gridColumns = max(1, (gridW - 2 * margin) / (LabelFont.advance * scale))
        for (ci, k) in report.cases.enumerated() {
            var y = margin + ci * block
            let head = "case \(ci + 1), seed \(k.seed): \(k.prompt.replacingOccurrences(of: "\n", with: " "))"
            text(String(head.prefix(gridColumns)), x: margin, y: y)
            y += lineH
            for (j, c) in report.configs.enumerated() {
                let x = margin + j * (w + margin)
                for (l, line) in labels[j].enumerated() { text(line, x: x, y: y + l * lineH, color: c.error != nil ? failedInk : ink) }
                let iy = y + labelLines * lineH
                let ref = images.first?[ci] ?? nil
                let result = c.results.first { $0.caseIndex == ci }
                if let im = images[j][ci] {
                    blit(im, x: x, y: iy)
                    var label = "no reference"
                    if let r = ref, r.width == im.width, r.height == im.height {
                        var d = [UInt8](repeating: 0, count: im.pixels.count)
                        for k in d.indices {
                            d[k] = UInt8(min(255, abs(Int(im.pixels[k]) - Int(r.pixels[k])) * gain))
                        }
                        blit(RGBImage(width: w, height: h, pixels: d), x: x, y: iy + h + lineH)
                        label = c.isReference ? "diff x\(gain)" : "x\(gain) " + (result?.metrics.map { ($0.psnr.isInfinite ? "inf" : String(format: "%.1f", $0.psnr)) + "dB" } ?? "")
                    }
                    text(String(label.prefix(columns)), x: x, y: iy + h + scale)
                } else {
                    fill(x: x, y: iy, color: (70, 20, 20))
                    fill(x: x, y: iy + h + lineH, color: (70, 20, 20))
                    var why = "failed: " + (result?.error ?? "no image")
                    if let n = result?.firstNonFinite { why = "NaN/Inf from \(n.path)" + (n.step.map { " step \($0)" } ?? "") }
                    for (l, line) in LabelFont.wrap(why, columns: columns).prefix(h / lineH).enumerated() {
                        text(line, x: x, y: iy + l * lineH + scale, color: failedInk)
                    }
                }
            }
        }
        return RGBImage(width: gridW, height: gridH, pixels: px)
    }
}

/// report.md and report.html.
enum PrecisionReportText {
    static func bytes(_ n: Int?) -> String { n.map { formatBytesShort($0) } ?? "-" }

    static func formatBytesShort(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(n); var u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        return u == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[u])
    }

    static func num(_ v: Double?, _ f: String) -> String {
        guard let v = v else { return "-" }
        if v.isNaN { return "nan" }
        if v.isInfinite { return v > 0 ? "inf" : "-inf" }
        return String(format: f, v)
    }

    struct Row {
        var config: PrecisionReport.Config
        var result: PrecisionReport.Result
        var perStep: Double? {
            result.stepSeconds.isEmpty ? nil : result.stepSeconds.reduce(0, +) / Double(result.stepSeconds.count)
        }
        var nonFinite: String {
            guard let n = result.firstNonFinite else { return result.error != nil || config.precision == nil ? "-" : "none" }
            return n.path + (n.step.map { " step \($0)" } ?? "") + " (\(n.computeDType))"
        }
    }

    static func rows(_ r: PrecisionReport) -> [Row] {
        r.configs.flatMap { c in c.results.map { Row(config: c, result: $0) } }
    }

    static let headers = ["#", "config", "case", "text s", "DiT s/step", "VAE s", "peak host", "peak CPU tensors", "peak device",
                          "latent rel. L2", "PSNR dB", "SSIM Y", "SSIM RGB", "VIF", "first non-finite", "error"]

    static func cells(_ row: Row) -> [(text: String, sort: Double?)] {
        let r = row.result, c = row.config, m = r.metrics
        return [("\(c.index)", Double(c.index)), (c.spec, nil), ("\(r.caseIndex + 1)", Double(r.caseIndex)),
                (num(r.encodeSeconds, "%.3f"), r.encodeSeconds), (num(row.perStep, "%.3f"), row.perStep),
                (num(r.decodeSeconds, "%.3f"), r.decodeSeconds), (bytes(c.peakHostBytes), Double(c.peakHostBytes)),
                (bytes(c.peakCPUTensorBytes), Double(c.peakCPUTensorBytes)), (bytes(c.peakDeviceBytes), c.peakDeviceBytes.map(Double.init)),
                (num(r.latentRelativeL2, "%.3g"), r.latentRelativeL2), (num(m?.psnr, "%.2f"), m?.psnr),
                (num(m?.ssim, "%.4f"), m?.ssim), (num(m?.ssimRGB, "%.4f"), m?.ssimRGB), (num(m?.vif ?? nil, "%.4f"), m?.vif ?? nil),
                (row.nonFinite, nil), (r.error ?? "", nil)]
    }

    static func header(_ r: PrecisionReport) -> [String] {
        let s = r.settings
        return [
            "- command: `\(r.command)`",
            "- created \(r.created) on \(r.machine.hostname): \(r.machine.cpu), \(r.machine.cpuCores) cores, \(formatBytesShort(r.machine.memoryBytes)), \(r.machine.os)",
            "- device: \(r.device) (`--device \(r.deviceSpec)`)",
            "- models: " + r.models.keys.sorted().map { "\($0) `\(r.models[$0]!)`" }.joined(separator: ", "),
            "- \(s.width)x\(s.height), \(s.sampler) with \(s.steps) grid points (\(s.evaluations) model evaluations), shift \(s.shift), CFG \(s.cfg) while t < \(s.cfgTrunc), renorm \(s.renorm), noise \(s.rng)",
            "- reference: config 0 (`\(r.configs.first?.spec ?? "-")`); every other config is measured against its latent and image",
            r.traced && r.configs.contains(where: { $0.timingPass == true })
                ? "- traced: every module output was summarised (first non-finite value, per-layer errors); times and memory come from a separate untraced pass of each config"
                : r.traced ? "- traced: every module output was summarised (first non-finite value, per-layer errors); stage times include the tracer's copies to the CPU"
                     : "- not traced: stage times are the pipeline's own; no first non-finite location and no per-layer errors",
        ]
    }

    static func markdown(_ r: PrecisionReport) -> String {
        var l = ["# Precision report", ""] + header(r) + [""]
        for (i, k) in r.cases.enumerated() {
            l.append("Case \(i + 1): seed \(k.seed), prompt `\(k.prompt.replacingOccurrences(of: "\n", with: " ").prefix(200))`")
        }
        l += ["", "| " + headers.joined(separator: " | ") + " |", "|" + String(repeating: " --- |", count: headers.count)]
        for row in rows(r) {
            l.append("| " + cells(row).map { $0.text.replacingOccurrences(of: "|", with: "\\|") }.joined(separator: " | ") + " |")
        }
        let held = r.configs.compactMap(\.heldByReportBytes).max() ?? 0
        l += ["", "Peak memory is per config (all its cases)" + (held > 0 ? "; the peak host memory of every config after the reference includes \(formatBytesShort(held)) the report holds (the reference's DiT module outputs for the per-layer comparison)" : "") + ". PSNR, SSIM (luminance Y and per channel) and VIF (pixel domain, on Y) compare each image with the reference config's image of the same case; inf / 1 / 1 is identical.", ""]
        let withLayers = r.configs.filter { !$0.layerErrors.isEmpty }
        if !withLayers.isEmpty {
            l += ["## Where precision is lost", "",
                  "Relative L2 error of each DiT module's output against the reference run (case 1), at model evaluations \(r.layerSteps.map(String.init).joined(separator: ", ")).", ""]
            let cols = withLayers.flatMap { c in c.layerErrors.map { (c, $0) } }
            l.append("| module | " + cols.map { "\($0.0.index): \($0.0.spec) @\($0.1.step)" }.joined(separator: " | ") + " |")
            l.append("|" + String(repeating: " --- |", count: cols.count + 1))
            var modules: [String] = []
            for (_, le) in cols { for m in le.modules where !modules.contains(m.path) { modules.append(m.path) } }
            for p in modules {
                l.append("| \(p) | " + cols.map { col in num(col.1.modules.first { $0.path == p }?.relativeError, "%.2e") }.joined(separator: " | ") + " |")
            }
            l.append("")
        }
        l += ["## Commands", ""]
        for c in r.configs where !c.generateCommand.isEmpty { l.append("- \(c.index) `\(c.spec)`: `\(c.generateCommand)`") }
        l.append("")
        return l.joined(separator: "\n")
    }

    static func esc(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    static let palette = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#808000", "#000075"]

    /// One SVG per chosen evaluation: x = module (in model order), y = log10 relative error, a
    /// line per config.
    static func layerPlot(_ r: PrecisionReport, step: Int) -> String {
        let series = r.configs.compactMap { c -> (PrecisionReport.Config, [PrecisionReport.ModuleError])? in
            guard let le = c.layerErrors.first(where: { $0.step == step }) else { return nil }
            return (c, le.modules)
        }
        guard let first = series.first else { return "" }
        let modules = first.1.map(\.path)
        let finite = series.flatMap { $0.1.map(\.relativeError) }.filter { $0.isFinite && $0 > 0 }
        let lo = floor(log10(finite.min() ?? 1e-8)), hi = max(ceil(log10(finite.max() ?? 1)), lo + 1)
        let (W, H, left, right, top, bottom) = (900.0, 370.0, 60.0, 20.0, 30.0, 110.0)
        let pw = W - left - right, ph = H - top - bottom
        func x(_ i: Int) -> Double { left + (modules.count > 1 ? Double(i) / Double(modules.count - 1) : 0.5) * pw }
        func y(_ v: Double) -> Double {
            guard v.isFinite, v > 0 else { return v == 0 ? top + ph : top - 8 }
            return top + (hi - log10(v)) / (hi - lo) * ph
        }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(W))\" height=\"\(Int(H))\" viewBox=\"0 0 \(Int(W)) \(Int(H))\" font-family=\"sans-serif\" font-size=\"11\">"
        s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(pw)\" height=\"\(ph)\" fill=\"#fafafa\" stroke=\"#999\"/>"
        var e = lo
        while e <= hi {
            let yy = y(pow(10, e))
            s += "<line x1=\"\(left)\" x2=\"\(left + pw)\" y1=\"\(yy)\" y2=\"\(yy)\" stroke=\"#ddd\"/><text x=\"\(left - 6)\" y=\"\(yy + 4)\" text-anchor=\"end\">1e\(Int(e))</text>"
            e += 1
        }
        for (i, m) in modules.enumerated() {
            let xx = x(i)
            s += "<text transform=\"translate(\(xx),\(top + ph + 6)) rotate(60)\" font-size=\"9\">\(esc(m.hasPrefix("dit.") ? String(m.dropFirst(4)) : m))</text>"
        }
        for (k, (c, mods)) in series.enumerated() {
            let color = palette[k % palette.count]
            let pts = mods.enumerated().map { "\(x($0.offset)),\(y($0.element.relativeError))" }.joined(separator: " ")
            s += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(pts)\"><title>\(esc("\(c.index): \(c.spec)"))</title></polyline>"
            for (i, m) in mods.enumerated() {
                s += "<circle cx=\"\(x(i))\" cy=\"\(y(m.relativeError))\" r=\"2.5\" fill=\"\(m.relativeError.isFinite ? color : "#000")\"><title>\(esc("\(c.spec) \(m.path): \(num(m.relativeError, "%.3e"))"))</title></circle>"
            }
            s += "<rect x=\"\(left + 10)\" y=\"\(top + 8 + Double(k) * 14)\" width=\"10\" height=\"10\" fill=\"\(color)\"/><text x=\"\(left + 24)\" y=\"\(top + 17 + Double(k) * 14)\">\(esc("\(c.index): \(c.spec)"))</text>"
        }
        s += "<text x=\"\(left)\" y=\"12\">relative error vs reference, model evaluation \(step) (log scale; black points above the plot: non-finite)</text></svg>"
        return s
    }

    /// `gridWidth`: the grid's width in pixels (small grids are shown enlarged, pixels kept sharp).
    static func html(_ r: PrecisionReport, gridPNG: Data, gridWidth: Int) -> String {
        var h = """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>NewBie precision report</title>
        <style>
        body { font-family: sans-serif; margin: 1.5em; color: #222; }
        table { border-collapse: collapse; font-size: 13px; }
        th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
        td.t { text-align: left; }
        th { background: #eee; cursor: pointer; user-select: none; }
        th.asc::after { content: " \\25B2"; } th.desc::after { content: " \\25BC"; }
        tr.failed td { background: #fde8e8; }
        code { background: #f3f3f3; padding: 1px 3px; }
        img { max-width: 100%; image-rendering: pixelated; }
        </style></head><body>
        <h1>NewBie precision report</h1>
        <ul>
        """
        for line in header(r) {
            var t = esc(String(line.dropFirst(2)))
            // `code` spans
            var parts = t.components(separatedBy: "`")
            for i in parts.indices where i % 2 == 1 { parts[i] = "<code>" + parts[i] + "</code>" }
            t = parts.joined()
            h += "<li>\(t)</li>\n"
        }
        h += "</ul>\n<ol>"
        for k in r.cases { h += "<li>seed \(k.seed): <code>\(esc(k.prompt))</code></li>" }
        h += "</ol>\n<h2>Results</h2>\n<p>Click a column to sort.</p>\n<table id=\"results\"><thead><tr>"
        for (i, t) in headers.enumerated() { h += "<th data-col=\"\(i)\">\(esc(t))</th>" }
        h += "</tr></thead><tbody>\n"
        for row in rows(r) {
            h += row.result.error != nil ? "<tr class=\"failed\">" : "<tr>"
            for c in cells(row) {
                if let v = c.sort {
                    h += "<td data-v=\"\(v.isFinite ? "\(v)" : v > 0 ? "1e308" : "-1e308")\">\(esc(c.text))</td>"
                } else {
                    h += "<td class=\"t\">\(esc(c.text))</td>"
                }
            }
            h += "</tr>\n"
        }
        h += "</tbody></table>\n"
        let held = r.configs.compactMap(\.heldByReportBytes).max() ?? 0
        h += "<p>Peak memory is per config (all its cases)" + (held > 0 ? "; the peak host memory of every config after the reference includes \(formatBytesShort(held)) the report holds for the per-layer comparison" : "")
            + ". PSNR, SSIM and VIF compare each image with the reference config's image of the same case; inf / 1 / 1 is identical.</p>\n"
        if r.configs.contains(where: { !$0.layerErrors.isEmpty }) {
            h += "<h2>Where precision is lost</h2>\n<p>Relative L2 error of each DiT module output against the reference run, first case.</p>\n"
            for s in r.layerSteps { h += "<div>" + layerPlot(r, step: s) + "</div>\n" }
        }
        h += "<h2>Images</h2>\n<p>Per case: each config's image under its label, and under it |image - reference| times \(r.diffGain).</p>\n"
        let shown = gridWidth * max(1, 700 / max(gridWidth, 1))
        h += "<img alt=\"grid\" width=\"\(shown)\" src=\"data:image/png;base64,\(gridPNG.base64EncodedString())\">\n"
        h += "<h2>Commands</h2><ul>"
        for c in r.configs where !c.generateCommand.isEmpty { h += "<li>\(c.index) <code>\(esc(c.spec))</code>: <code>\(esc(c.generateCommand))</code></li>" }
        h += """
        </ul>
        <script>
        (function () {
          var table = document.getElementById('results');
          var ths = table.querySelectorAll('th');
          ths.forEach(function (th) {
            th.addEventListener('click', function () {
              var col = +th.getAttribute('data-col');
              var asc = !th.classList.contains('asc');
              ths.forEach(function (o) { o.classList.remove('asc', 'desc'); });
              th.classList.add(asc ? 'asc' : 'desc');
              var body = table.tBodies[0];
              var rows = Array.prototype.slice.call(body.rows);
              rows.sort(function (a, b) {
                var x = a.cells[col], y = b.cells[col];
                var vx = x.getAttribute('data-v'), vy = y.getAttribute('data-v');
                var c = (vx !== null && vy !== null) ? (+vx - +vy) : x.textContent.localeCompare(y.textContent);
                if (vx === null && vy !== null) c = 1;
                if (vx !== null && vy === null) c = -1;
                return asc ? c : -c;
              });
              rows.forEach(function (row) { body.appendChild(row); });
            });
          });
        })();
        </script>
        </body></html>

        """
        return h
    }
}
