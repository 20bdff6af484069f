//! Builds the console (`web/`, TypeScript bundled by esbuild) into OUT_DIR
//! and embeds the files, so the `fluxo` binary is all a user needs.
//!
//! `npm ci` runs when `web/node_modules` is missing or older than the lock
//! file; `npm run build` whenever the sources change. With
//! `FLUXO_CONSOLE_DIST=DIR` the files are taken from DIR instead and npm is
//! not needed (for packagers who build the console separately).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files the console's build writes, with their content types.
const FILES: &[(&str, &str)] = &[
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("app.css", "text/css; charset=utf-8"),
];

fn main() {
    let manifest = PathBuf::from(cargo_var("CARGO_MANIFEST_DIR"));
    let web = manifest.join("web");
    for watched in [
        "src",
        "build.mjs",
        "package.json",
        "package-lock.json",
        "tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed=web/{watched}");
    }
    println!("cargo:rerun-if-env-changed=FLUXO_CONSOLE_DIST");
    let out_dir = PathBuf::from(cargo_var("OUT_DIR"));
    let out = out_dir.join("console");
    if let Err(e) = std::fs::create_dir_all(&out) {
        fail(&format!("cannot create {}: {e}", out.display()));
    }

    let dist = match std::env::var_os("FLUXO_CONSOLE_DIST") {
        Some(dir) => PathBuf::from(dir),
        None => {
            build_with_npm(&web, &out);
            out.clone()
        }
    };

    let mut code = String::from("pub static FILES: &[(&str, &str, &[u8])] = &[\n");
    for (name, content_type) in FILES {
        let path = dist.join(name);
        if !path.is_file() {
            fail(&format!(
                "the console build did not produce {}",
                path.display()
            ));
        }
        code.push_str(&format!(
            "    ({name:?}, {content_type:?}, include_bytes!({:?})),\n",
            path.display().to_string()
        ));
    }
    code.push_str("];\n");
    let files = out_dir.join("files.rs");
    if let Err(e) = std::fs::write(&files, code) {
        fail(&format!("cannot write {}: {e}", files.display()));
    }
}

/// A variable cargo sets for every build script.
fn cargo_var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| fail(&format!("{name} is not set: run this through cargo")))
}

fn build_with_npm(web: &Path, out: &Path) {
    let lock = web.join("package-lock.json");
    let installed = web.join("node_modules").join(".package-lock.json");
    let stale = match (mtime(&lock), mtime(&installed)) {
        (Some(l), Some(i)) => l > i,
        _ => true,
    };
    if stale {
        run(
            Command::new(npm())
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(web),
            "npm ci",
        );
    }
    run(
        Command::new(npm())
            .args(["run", "--silent", "build"])
            .env("FLUXO_CONSOLE_OUT", out)
            .current_dir(web),
        "npm run build",
    );
}

fn npm() -> &'static str {
    if cfg!(windows) {
        "npm.cmd"
    } else {
        "npm"
    }
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn run(command: &mut Command, what: &str) {
    match command.status() {
        Ok(s) if s.success() => {}
        Ok(s) => fail(&format!(
            "`{what}` in crates/fluxo-console/web failed ({s})"
        )),
        Err(e) => fail(&format!(
            "cannot run `{what}` ({e}): the console is built with Node.js 18+ and npm \
             (Debian: apt-get install nodejs npm; ./scripts/setup-tests.sh installs them), \
             or set FLUXO_CONSOLE_DIST to a directory with a built console"
        )),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    panic!("{message}");
}
