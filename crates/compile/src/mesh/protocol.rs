//! What a Service port speaks: `appProtocol`, else the port name prefix, else TCP. No sniffing:
//! server-first protocols must never wait on a detection timeout.

use strait_config::AppProtocol;
use strait_config::mesh::MeshProtocol;

/// The protocol of a Service port. A recognised `appProtocol` decides (case-insensitively);
/// one that is set but not recognised (`https`, `mysql`, ...) means opaque TCP, since the
/// owner said what the port speaks and it is nothing a waypoint parses. Without `appProtocol`
/// the port name decides by prefix (`http`, `http2`, `h2c`, `grpc`, `ws`, `tcp`, followed by
/// the end of the name or `-`).
pub(crate) fn detect(app_protocol: Option<&str>, port_name: Option<&str>) -> MeshProtocol {
    if let Some(p) = app_protocol.filter(|p| !p.is_empty()) {
        return match p.to_ascii_lowercase().as_str() {
            "http" => MeshProtocol::Http1,
            "kubernetes.io/h2c" => MeshProtocol::H2c,
            "grpc" => MeshProtocol::Grpc,
            "kubernetes.io/ws" => MeshProtocol::WebSocket,
            _ => MeshProtocol::Tcp,
        };
    }
    let name = port_name.unwrap_or("").to_ascii_lowercase();
    let prefix = name.split_once('-').map_or(name.as_str(), |(p, _)| p);
    match prefix {
        "http" => MeshProtocol::Http1,
        "http2" | "h2c" => MeshProtocol::H2c,
        "grpc" => MeshProtocol::Grpc,
        "ws" => MeshProtocol::WebSocket,
        _ => MeshProtocol::Tcp,
    }
}

/// How a waypoint speaks to the endpoints of a port of this protocol.
pub(crate) fn cluster_protocol(protocol: MeshProtocol) -> AppProtocol {
    match protocol {
        MeshProtocol::H2c | MeshProtocol::Grpc => AppProtocol::H2c,
        MeshProtocol::WebSocket => AppProtocol::WebSocket,
        MeshProtocol::Http1 | MeshProtocol::Tcp => AppProtocol::Http1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_table() {
        use MeshProtocol::*;
        let cases: &[(Option<&str>, Option<&str>, MeshProtocol)] = &[
            (Some("http"), Some("tcp"), Http1),
            (Some("HTTP"), None, Http1),
            (Some("kubernetes.io/h2c"), None, H2c),
            (Some("grpc"), Some("http"), Grpc),
            (Some("kubernetes.io/ws"), None, WebSocket),
            (Some("tcp"), Some("http"), Tcp),
            (Some("https"), Some("http"), Tcp),
            (Some("mysql"), None, Tcp),
            (Some(""), Some("http"), Http1),
            (None, Some("http"), Http1),
            (None, Some("http-web"), Http1),
            (None, Some("HTTP-Web"), Http1),
            (None, Some("http2"), H2c),
            (None, Some("h2c-api"), H2c),
            (None, Some("grpc"), Grpc),
            (None, Some("grpc-web"), Grpc),
            (None, Some("ws"), WebSocket),
            (None, Some("ws-chat"), WebSocket),
            (None, Some("tcp-db"), Tcp),
            (None, Some("https"), Tcp),
            (None, Some("httpx"), Tcp),
            (None, Some("web"), Tcp),
            (None, Some(""), Tcp),
            (None, None, Tcp),
        ];
        for (app, name, want) in cases {
            assert_eq!(
                detect(*app, *name),
                *want,
                "appProtocol {app:?} name {name:?}"
            );
        }
    }

    #[test]
    fn cluster_protocols() {
        assert_eq!(cluster_protocol(MeshProtocol::Grpc), AppProtocol::H2c);
        assert_eq!(cluster_protocol(MeshProtocol::H2c), AppProtocol::H2c);
        assert_eq!(
            cluster_protocol(MeshProtocol::WebSocket),
            AppProtocol::WebSocket
        );
        assert_eq!(cluster_protocol(MeshProtocol::Http1), AppProtocol::Http1);
        assert_eq!(cluster_protocol(MeshProtocol::Tcp), AppProtocol::Http1);
    }
}
