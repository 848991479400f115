//! For the tests: reads the SVGs back as a program would, by their attributes.

use std::collections::HashMap;

/// The attributes of every `<tag …>` in `svg`, in order (values still escaped).
pub fn elements(svg: &str, tag: &str) -> Vec<HashMap<String, String>> {
    let open = format!("<{tag} ");
    let mut found = Vec::new();
    let mut rest = svg;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let body = &rest[..rest.find('>').expect("a closed tag")];
        let mut attrs = HashMap::new();
        for pair in body.split('"').collect::<Vec<_>>().chunks(2).filter(|c| c.len() == 2) {
            attrs.insert(pair[0].trim().trim_end_matches('=').to_string(), pair[1].to_string());
        }
        found.push(attrs);
    }
    found
}

/// A panel's mapping from pixels back to data.
pub struct Mapping(HashMap<String, String>);

impl Mapping {
    pub fn of(svg: &str, panel: &str) -> Mapping {
        let attrs = elements(svg, "g").into_iter().find(|g| g.get("data-panel").map(String::as_str) == Some(panel));
        Mapping(attrs.unwrap_or_else(|| panic!("no panel {panel}")))
    }

    fn get(&self, key: &str) -> f64 {
        self.0[key].parse().unwrap()
    }

    /// Data coordinates of the pixel (`px`, `py`).
    pub fn data(&self, px: f64, py: f64) -> (f64, f64) {
        let (x0, x1, y0, y1) = (self.get("data-x0"), self.get("data-x1"), self.get("data-y0"), self.get("data-y1"));
        let (left, top, width, height) =
            (self.get("data-left"), self.get("data-top"), self.get("data-width"), self.get("data-height"));
        (x0 + (px - left) / width * (x1 - x0), y0 + (top + height - py) / height * (y1 - y0))
    }

    /// Data units per pixel, along x and y.
    pub fn resolution(&self) -> (f64, f64) {
        let (x0, x1, y0, y1) = (self.get("data-x0"), self.get("data-x1"), self.get("data-y0"), self.get("data-y1"));
        ((x1 - x0) / self.get("data-width"), (y1 - y0) / self.get("data-height"))
    }
}

/// The points of the polyline `series`, in data coordinates.
pub fn series(svg: &str, panel: &str, name: &str) -> Vec<(f64, f64)> {
    let mapping = Mapping::of(svg, panel);
    let line = elements(svg, "polyline").into_iter().find(|l| l["data-series"] == name);
    let line = line.unwrap_or_else(|| panic!("no series {name}"));
    line["points"]
        .split(' ')
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            mapping.data(x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}
