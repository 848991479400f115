//! A minimal SVG writer: escaped text and attributes, and panels that map a data domain onto a
//! pixel box and say so in `data-*` attributes, so a reader can turn pixels back into data.

use std::fmt::Write;

/// `text` safe inside XML content and attribute values. Characters XML 1.0 forbids even as
/// references (most C0 controls) are dropped: a job name may contain anything.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// A coordinate or data value as written: pixels to 0.01, enough for any screen.
pub fn num(value: f64) -> String {
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

pub struct Svg {
    out: String,
}

impl Svg {
    pub fn new(width: f64, height: f64) -> Self {
        let mut svg = Svg { out: String::new() };
        svg.open(
            "svg",
            &[
                ("xmlns", "http://www.w3.org/2000/svg".into()),
                ("width", num(width)),
                ("height", num(height)),
                ("viewBox", format!("0 0 {} {}", num(width), num(height))),
                ("font-family", "sans-serif".into()),
                ("font-size", "12".into()),
            ],
        );
        svg.element("rect", &[("width", num(width)), ("height", num(height)), ("fill", "white".into())]);
        svg
    }

    /// The picture's title: in full as its `<title>` (tooltips, screen readers), and as a
    /// heading centred at the top, shortened to what fits.
    pub fn title(&mut self, width: f64, title: &str) {
        let _ = writeln!(self.out, "<title>{}</title>", escape(title));
        // About 9 pixels a character at 16 pixels bold.
        let fits = ((width - 40.0) / 9.0) as usize;
        let heading = match title.chars().count() > fits {
            true => title.chars().take(fits.saturating_sub(1)).collect::<String>() + "…",
            false => title.to_string(),
        };
        let bold = [("text-anchor", "middle".to_string()), ("font-size", "16".into()), ("font-weight", "bold".into())];
        self.text(width / 2.0, 30.0, &bold, &heading);
    }

    fn tag(&mut self, name: &str, attrs: &[(&str, String)]) {
        self.out.push('<');
        self.out.push_str(name);
        for (key, value) in attrs {
            let _ = write!(self.out, " {key}=\"{}\"", escape(value));
        }
    }

    pub fn open(&mut self, name: &str, attrs: &[(&str, String)]) {
        self.tag(name, attrs);
        self.out.push_str(">\n");
    }

    pub fn close(&mut self, name: &str) {
        let _ = writeln!(self.out, "</{name}>");
    }

    /// An element without content.
    pub fn element(&mut self, name: &str, attrs: &[(&str, String)]) {
        self.tag(name, attrs);
        self.out.push_str("/>\n");
    }

    pub fn text(&mut self, x: f64, y: f64, attrs: &[(&str, String)], content: &str) {
        self.tag("text", &[("x", num(x)), ("y", num(y))]);
        for (key, value) in attrs {
            let _ = write!(self.out, " {key}=\"{}\"", escape(value));
        }
        let _ = writeln!(self.out, ">{}</text>", escape(content));
    }

    pub fn finish(mut self) -> String {
        self.close("svg");
        self.out
    }
}

/// A closed interval of data values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub lo: f64,
    pub hi: f64,
}

impl Range {
    /// The smallest range holding every finite value, or `fallback` when there is none.
    pub fn of(values: impl IntoIterator<Item = f64>, fallback: Range) -> Range {
        let (lo, hi) = values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            fallback
        } else {
            Range { lo, hi }
        }
    }

    /// Widened to round numbers, with the tick positions: about `count` ticks at 1, 2 or 5 × 10ⁿ.
    pub fn nice(self, count: usize) -> (Range, Vec<f64>) {
        let (lo, hi) = if self.hi > self.lo { (self.lo, self.hi) } else { (self.lo - 0.5, self.lo + 0.5) };
        let rough = (hi - lo) / count.max(1) as f64;
        let magnitude = 10f64.powf(rough.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * magnitude).find(|s| *s >= rough).unwrap_or(rough);
        let (first, last) = ((lo / step).floor(), (hi / step).ceil());
        let ticks = (0..=(last - first) as i64).map(|i| (first + i as f64) * step).collect();
        (Range { lo: first * step, hi: last * step }, ticks)
    }

    /// As [`Range::nice`], for counts (steps, epochs): ticks are whole numbers.
    pub fn nice_whole(self, count: usize) -> (Range, Vec<f64>) {
        let (range, ticks) = self.nice(count);
        if ticks.len() < 2 || ticks[1] - ticks[0] >= 1.0 {
            return (range, ticks);
        }
        let (lo, hi) = (self.lo.floor(), self.hi.ceil().max(self.lo.floor() + 1.0));
        (Range { lo, hi }, (lo as i64..=hi as i64).map(|t| t as f64).collect())
    }

    fn span(self) -> f64 {
        self.hi - self.lo
    }
}

/// A tick label: as many decimals as the tick spacing needs.
pub fn tick_label(value: f64, ticks: &[f64]) -> String {
    let step = match ticks {
        [a, b, ..] => (b - a).abs(),
        _ => 1.0,
    };
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    format!("{value:.decimals$}")
}

/// A plotting area: the data domain `x` × `y` drawn into the pixel box at (`left`, `top`).
pub struct Panel {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
    pub x: Range,
    pub y: Range,
}

impl Panel {
    pub fn px(&self, x: f64) -> f64 {
        self.left + (x - self.x.lo) / self.x.span() * self.width
    }

    pub fn py(&self, y: f64) -> f64 {
        self.top + self.height - (y - self.y.lo) / self.y.span() * self.height
    }

    /// Opens the panel's group, whose attributes give the mapping; close it with `</g>`.
    pub fn open(&self, svg: &mut Svg, name: &str) {
        svg.open(
            "g",
            &[
                ("data-panel", name.into()),
                ("data-x0", self.x.lo.to_string()),
                ("data-x1", self.x.hi.to_string()),
                ("data-y0", self.y.lo.to_string()),
                ("data-y1", self.y.hi.to_string()),
                ("data-left", num(self.left)),
                ("data-top", num(self.top)),
                ("data-width", num(self.width)),
                ("data-height", num(self.height)),
            ],
        );
    }

    /// The frame, grid lines and tick labels; `label_y` writes a y tick's label.
    pub fn axes(&self, svg: &mut Svg, x_ticks: &[f64], y_ticks: &[f64], label_y: &dyn Fn(f64) -> String) {
        let grid = |svg: &mut Svg, (x1, y1, x2, y2): (f64, f64, f64, f64)| {
            let attrs = [("x1", num(x1)), ("y1", num(y1)), ("x2", num(x2)), ("y2", num(y2)), ("stroke", "#ddd".into())];
            svg.element("line", &attrs);
        };
        let end = [("text-anchor", "end".to_string())];
        for &y in y_ticks {
            grid(svg, (self.left, self.py(y), self.left + self.width, self.py(y)));
            svg.text(self.left - 6.0, self.py(y) + 4.0, &end, &label_y(y));
        }
        let middle = [("text-anchor", "middle".to_string())];
        for &x in x_ticks {
            grid(svg, (self.px(x), self.top, self.px(x), self.top + self.height));
            svg.text(self.px(x), self.top + self.height + 16.0, &middle, &tick_label(x, x_ticks));
        }
        svg.element(
            "rect",
            &[
                ("x", num(self.left)),
                ("y", num(self.top)),
                ("width", num(self.width)),
                ("height", num(self.height)),
                ("fill", "none".into()),
                ("stroke", "#333".into()),
            ],
        );
    }

    /// `points` in data coordinates as a polyline's `points` attribute.
    pub fn points(&self, points: &[(f64, f64)]) -> String {
        let pairs: Vec<String> =
            points.iter().map(|&(x, y)| format!("{},{}", num(self.px(x)), num(self.py(y)))).collect();
        pairs.join(" ")
    }
}

/// `text` cut into lines of at most `width` characters, at spaces where it can be.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_and_drops_what_xml_forbids() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;");
        assert_eq!(escape("bell\u{7}\u{0} tab\t ünïcode"), "bell tab\t ünïcode");
        let mut svg = Svg::new(10.0, 10.0);
        svg.text(1.0, 2.0, &[("data-name", "\"><script>".into())], "</text><script>alert(1)</script>");
        let out = svg.finish();
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains(r#"data-name="&quot;&gt;&lt;script&gt;""#), "{out}");
    }

    #[test]
    fn a_long_title_is_shortened_in_the_heading_and_whole_in_the_title_element() {
        let name =
            "fashion-mnist: ensemble of a conv and an MLP teacher, generalised JS loss, alpha schedule, top-3 cache";
        let mut svg = Svg::new(500.0, 100.0);
        svg.title(500.0, name);
        let out = svg.finish();
        assert!(out.contains(&format!("<title>{name}</title>")), "{out}");
        let heading = out.split("font-weight=\"bold\">").nth(1).unwrap().split("</text>").next().unwrap();
        assert!(heading.ends_with('…') && heading.chars().count() <= 52, "{heading}");
    }

    #[test]
    fn nice_ranges_hold_the_data_and_tick_at_round_steps() {
        let (range, ticks) = Range { lo: 0.13, hi: 2.31 }.nice(5);
        assert_eq!(range, Range { lo: 0.0, hi: 2.5 });
        assert_eq!(ticks.len(), 6);
        assert_eq!(tick_label(ticks[1], &ticks), "0.5");
        let (flat, _) = Range { lo: 3.0, hi: 3.0 }.nice(5);
        assert!(flat.lo < 3.0 && flat.hi > 3.0, "{flat:?}");
    }

    #[test]
    fn wrapping_keeps_every_word_and_the_width() {
        let text = "distillation made no clear difference: +0.9 points against the same student";
        let lines = wrap(text, 30);
        assert!(lines.iter().all(|l| l.chars().count() <= 30), "{lines:?}");
        assert_eq!(lines.join(" "), text);
    }
}
