//! nginx (Debian's) in front of two nodes, proxying plain `ws://`: the whole
//! flow works through it, and the observed IP is the client's when nginx is
//! a trusted proxy and nginx's own when it is not.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wsgate_client::{ClientConfig, login};

use crate::util::*;

/// nginx binds its upstream connections to this address.
const NGINX_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The reverse-proxy configuration of docs/deployment.md, on test ports.
fn start_nginx(nodes: &[SocketAddr]) -> Nginx {
    let binary =
        nginx_binary().expect("nginx is not installed: apt-get install nginx-light (or nginx)");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let upstreams: String = nodes
        .iter()
        .map(|n| format!("        server {n};\n"))
        .collect();
    let d = dir.path().display();
    let conf = format!(
        r#"daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream wsgate {{
{upstreams}    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://wsgate;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header Forwarded "for=$remote_addr";
            proxy_bind {NGINX_IP};
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    );
    let conf_path = dir.path().join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Command::new(binary)
        .args([
            "-c",
            conf_path.to_str().unwrap(),
            "-p",
            dir.path().to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Nginx {
                child,
                addr,
                _dir: dir,
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
    panic!("nginx did not start: {log}");
}

async fn full_flow_through_nginx(trusted: bool) -> (String, String) {
    let fleet = Fleet::new().await;
    let toml = if trusted {
        // nginx writes both headers here; the gateway reads only the one named.
        format!("trusted_proxies = [\"{NGINX_IP}/32\"]\n[proxy]\nclient_ip_header = \"forwarded\"")
    } else {
        String::new()
    };
    let a = TestGateway::start_in(&fleet, config(&toml)).await;
    let b = TestGateway::start_in(&fleet, config(&toml)).await;
    let nginx = start_nginx(&[a.addr, b.addr]);
    let client = ClientConfig::from_addr(nginx.addr).local_addr(SECOND_CLIENT_IP);
    let session = login(&client, ALICE, ALICE_PASSWORD).await.unwrap();
    // Several connections: round robin spreads them over both nodes.
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(session.connect(&client).await.unwrap());
    }
    for conn in &mut conns {
        assert_eq!(
            conn.request("sys.echo", b"through nginx", true)
                .await
                .unwrap(),
            b"through nginx"
        );
    }
    let who: serde_json::Value =
        serde_json::from_slice(&conns[0].request("sys.whoami", b"", false).await.unwrap()).unwrap();
    let logout_conn = conns.pop().unwrap();
    logout_conn.logout().await.unwrap();
    for conn in &mut conns {
        assert_eq!(
            conn.raw().expect_close().await.unwrap(),
            Some(4001),
            "logout reaches every node"
        );
    }
    (session.ip, who["ip"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_trusted_nginx_the_client_ip_is_observed() {
    if skip_services() {
        return;
    }
    let (login_ip, ws_ip) = full_flow_through_nginx(true).await;
    assert_eq!(login_ip, "127.0.0.2");
    assert_eq!(ws_ip, "127.0.0.2");
}

#[tokio::test(flavor = "multi_thread")]
async fn through_an_untrusted_nginx_its_own_ip_is_observed() {
    if skip_services() {
        return;
    }
    let (login_ip, ws_ip) = full_flow_through_nginx(false).await;
    assert_eq!(
        login_ip, "127.0.0.3",
        "headers from an untrusted peer are ignored"
    );
    assert_eq!(ws_ip, "127.0.0.3");
}
