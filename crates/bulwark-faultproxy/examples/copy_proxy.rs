//! The smallest correct tokio TCP proxy (`copy_bidirectional` per connection, no toxics,
//! no API): the anchor `scripts/bench-proxy.sh` measures the fault proxy's no-toxic path
//! against, so its overhead is compared with what any tokio proxy costs, not only with
//! going direct.
//!
//! `copy_proxy LISTEN UPSTREAM`, e.g. `copy_proxy 127.0.0.1:7000 127.0.0.1:6379`.

use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: copy_proxy LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(&listen).await?;
    loop {
        let (mut client, _) = listener.accept().await?;
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let Ok(mut server) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        });
    }
}
