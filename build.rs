//! Embeds the browser SDK and demo page from `web/` into the binary, so an installed
//! `edgegate` serves them with nothing else on disk. A missing file embeds as empty and the
//! server answers 404 for it.

use std::path::Path;

/// Files served from `web/`: (path in `web/`, URL path, content type).
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "/", "text/html; charset=utf-8"),
    (
        "edgegate.js",
        "/edgegate.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "edgegate.d.ts",
        "/edgegate.d.ts",
        "application/typescript; charset=utf-8",
    ),
    ("codec.js", "/codec.js", "text/javascript; charset=utf-8"),
    ("demo.js", "/demo.js", "text/javascript; charset=utf-8"),
    ("demo.css", "/demo.css", "text/css; charset=utf-8"),
    ("mesh.html", "/mesh", "text/html; charset=utf-8"),
];

fn main() {
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let mut out = String::from(
        "/// Embedded web assets: (URL path, content type, bytes).\npub static ASSETS: &[(&str, &str, &[u8])] = &[\n",
    );
    for (file, url, ctype) in FILES {
        let p = Path::new(&root).join("web").join(file);
        println!("cargo:rerun-if-changed={}", p.display());
        if p.exists() {
            out.push_str(&format!(
                "    ({url:?}, {ctype:?}, include_bytes!({:?})),\n",
                p.display().to_string()
            ));
        }
    }
    out.push_str("];\n");
    println!("cargo:rerun-if-changed=web");
    let dest =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("web_assets.rs");
    std::fs::write(dest, out).expect("write web_assets.rs");
}
