//! The admin web page at `/ui`: a few static files compiled into the binary (no CDN, no
//! external fonts, no build step), served by the admin listener.
//!
//! The page itself carries no secret and loads without the admin token; every call it makes
//! to the admin API sends the token in `Authorization`, from the browser's session storage
//! (never a cookie, never a URL). The Content-Security-Policy allows only these files: no
//! inline script or style, no other origin, no framing.
//!
//! | file | what |
//! | --- | --- |
//! | `index.html` | the shell: login form, navigation, one section per page |
//! | `app.css` | the look |
//! | `app.js` | the pages (keys, teams, spend, live traffic, upstream health, audit log) |
//! | `chart.js` | a small SVG bar and line chart, written for this page |
//! | `favicon.svg` | the tab's icon |

use sluice_core::error::{bounded, ErrorKind, GatewayError};

use crate::listen::respond;

/// What the page may load and do.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' \
                       data:; connect-src 'self'; font-src 'none'; object-src 'none'; \
                       base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The embedded files: path under `/ui`, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("", "text/html; charset=utf-8", include_bytes!("index.html")),
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("index.html"),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!("app.css"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("app.js"),
    ),
    (
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("favicon.svg"),
    ),
    (
        "/chart.js",
        "text/javascript; charset=utf-8",
        include_bytes!("chart.js"),
    ),
];

/// Whether `path` belongs to the page.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Answers a request for the page or one of its files.
pub fn handle(method: &str, path: &str, keep_alive: bool) -> Vec<u8> {
    let rest = path.strip_prefix("/ui").unwrap_or(path);
    let Some((_, content_type, body)) = ASSETS.iter().find(|(p, _, _)| *p == rest) else {
        return respond::error(
            &GatewayError::new(
                ErrorKind::RouteNotFound,
                format!("No such page file: {}", bounded(path)),
            ),
            keep_alive,
            "admin",
        );
    };
    if method != "GET" && method != "HEAD" {
        return respond::error_with(
            &GatewayError::new(ErrorKind::MethodNotAllowed, "use GET"),
            &[("allow", b"GET, HEAD")],
            keep_alive,
            "admin",
        );
    }
    let mut out = Vec::with_capacity(body.len() + 600);
    respond::write_head(
        &mut out,
        200,
        &[
            ("content-type", content_type.as_bytes()),
            ("content-security-policy", CSP.as_bytes()),
            ("x-content-type-options", b"nosniff"),
            ("x-frame-options", b"DENY"),
            ("referrer-policy", b"no-referrer"),
            ("cross-origin-opener-policy", b"same-origin"),
            ("cross-origin-resource-policy", b"same-origin"),
            ("cache-control", b"no-cache"),
        ],
        respond::ClientFraming::Length(body.len() as u64),
        keep_alive,
        "admin",
    );
    if method == "GET" {
        out.extend_from_slice(body);
    }
    out
}
