//! The README's Rust snippets are compiled: each stands word for word in `examples/readme.rs`,
//! which `cargo test` builds.

/// The text of every ```` ```rust ```` block of `markdown`.
fn rust_blocks(markdown: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("```rust\n") {
        let body = &rest[start + "```rust\n".len()..];
        let end = body.find("\n```").expect("a closed code block");
        blocks.push(&body[..end]);
        rest = &body[end + 4..];
    }
    blocks
}

#[test]
fn snippets_are_compiled() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).expect("README.md");
    let compiled =
        std::fs::read_to_string(format!("{root}/examples/readme.rs")).expect("examples/readme.rs");
    let blocks = rust_blocks(&readme);
    assert!(
        blocks.len() >= 6,
        "{} Rust blocks in the README",
        blocks.len()
    );
    for block in blocks {
        assert!(
            compiled.contains(block),
            "this README snippet is not in examples/readme.rs, so nothing compiles it:\n{block}"
        );
    }
}
