//! Prints the error messages of common failures (for reviewing their
//! wording): `cargo run -p disklayer_sqlite --example error_messages`.

use disklayer_sqlite::AutoCacheSqliteDiskLayer;
use disklayer_sqlite::Geometry;
use disklayer_sqlite::SqliteDiskLayer;
use disklayer_sqlite::auto_cache::LowerDisk;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lower = |n| LowerDisk {
        geometry: Geometry {
            sector_count: n,
            sector_size: 512,
        },
        disk_id: None,
    };
    let show = |what: &str, e: &dyn std::error::Error| {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        println!("{what}:\n  {msg}");
    };
    let cache = AutoCacheSqliteDiskLayer::new(dir.path().join("cache"), Some("img".into()), false);
    cache.open_for(&lower(1000)).await?;
    if let Err(e) = cache.open_for(&lower(2000)).await {
        show("geometry mismatch", &e);
    }
    if let Err(e) = AutoCacheSqliteDiskLayer::new(dir.path(), None, false)
        .open_for(&lower(10))
        .await
    {
        show("no key", &e);
    }
    if let Err(e) = AutoCacheSqliteDiskLayer::new(dir.path().join("c2"), Some("k".into()), true)
        .open_for(&lower(10))
        .await
    {
        show("read-only, missing", &e);
    }
    let garbage = dir.path().join("garbage.dbhd");
    std::fs::write(&garbage, vec![7u8; 70000])?;
    if let Err(e) = SqliteDiskLayer::open(&garbage, false).await {
        show("garbage file", &e);
    }
    let file = dir.path().join("file");
    std::fs::write(&file, b"x")?;
    if let Err(e) = AutoCacheSqliteDiskLayer::new(&file, Some("k".into()), false)
        .open_for(&lower(10))
        .await
    {
        show("cache dir is a file", &e);
    }
    Ok(())
}
