//! What the proxy's integration tests share: `proxy trace` run as the binary.

use crate::common::{kubewire, success};

/// `kubewire proxy trace … --format json` on `manifests`: the JSON line it prints.
pub fn trace(
    manifests: &str,
    node: &str,
    from: &str,
    to: &str,
    port: u64,
    protocol: &str,
) -> String {
    let port = port.to_string();
    let args = [
        "proxy",
        "trace",
        "--manifests",
        manifests,
        "--node",
        node,
        "--from",
        from,
        "--to",
        to,
        "--port",
        &port,
        "--protocol",
        protocol,
        "--format",
        "json",
    ];
    success(kubewire(&args), &args.join(" ")).trim().to_string()
}
