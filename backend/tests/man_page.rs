//! The committed manual page (`docs/vhost-user-rdma.1`) is what the
//! binary renders from its clap definitions today.

use std::process::Command;

#[test]
fn the_committed_man_page_is_current() {
    let out = Command::new(env!("CARGO_BIN_EXE_vhost-user-rdma"))
        .arg("man")
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.contains(".SH NAME") && page.contains("\\-\\-pvrdma"),
        "{page}"
    );
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/vhost-user-rdma.1"
    ))
    .unwrap();
    assert!(
        committed == page,
        "docs/vhost-user-rdma.1 is stale: run `target/debug/vhost-user-rdma man > docs/vhost-user-rdma.1`"
    );
}
