use std::sync::mpsc;
use std::time::Duration;

#[test]
fn a_changed_file_triggers_a_reload_with_the_new_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n",
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let _watcher = pier_manifests::watch(dir.path(), move |r| {
        let _ = tx.send(r.map(|s| s.namespaces.len()).map_err(|e| e.to_string()));
    })
    .unwrap();
    std::fs::write(&file, "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n").unwrap();
    let mut last = None;
    // Several events may arrive for one write; wait for the one that sees both.
    while last != Some(Ok(2)) {
        last = Some(
            rx.recv_timeout(Duration::from_secs(10))
                .expect("a reload within 10 s"),
        );
    }
    std::fs::write(&file, "kind: [broken\n").unwrap();
    loop {
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a reload within 10 s");
        if let Err(e) = r {
            assert!(e.contains("svc.yaml:") && e.contains("invalid YAML"), "{e}");
            break;
        }
    }
}
