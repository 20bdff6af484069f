//! fluxo's web console, embedded: the files of the single-page app in
//! `web/` as built by `npm run build` when this crate compiled.

include!(concat!(env!("OUT_DIR"), "/files.rs"));

/// A file of the console.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    pub bytes: &'static [u8],
    pub content_type: &'static str,
}

/// The console's file at `name` (`index.html`, `app.js`, `app.css`).
pub fn asset(name: &str) -> Option<Asset> {
    FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, content_type, bytes)| Asset {
            bytes,
            content_type,
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_loads_its_script_and_styles() {
        let index = super::asset("index.html").expect("index.html is embedded");
        let html = std::str::from_utf8(index.bytes).unwrap();
        assert!(
            html.contains("/app.js") && html.contains("/app.css"),
            "{html}"
        );
        assert!(!super::asset("app.js").unwrap().bytes.is_empty());
        assert!(super::asset("../Cargo.toml").is_none());
    }
}
