//! The README's library example is `examples/readme.rs` (compiled with the examples): the
//! code in the README and in the example must say the same, whitespace aside.

use std::path::Path;

/// Everything but whitespace and trailing commas, so that rustfmt's layout and the
/// README's hand alignment compare equal.
fn tokens(text: &str) -> String {
    let bare: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    bare.replace(",}", "}").replace(",)", ")")
}

#[test]
fn readme_library_example_is_the_compiled_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).expect("README.md");
    let example = std::fs::read_to_string(root.join("examples/readme.rs")).expect("readme.rs");

    let section = readme
        .split("## Using the library")
        .nth(1)
        .expect("a \"Using the library\" section");
    let block = section
        .split("```rust")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a rust block in that section");
    // In the README, hidden doctest lines (`# ...`) wrap the code in a function.
    let (readme_imports, readme_body) = block
        .split_once("# async fn")
        .expect("the hidden `# async fn` line");
    let readme_body: Vec<&str> = readme_body
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("# "))
        .collect();
    let (example_imports, example_rest) = example
        .split_once("#[tokio::main]")
        .expect("#[tokio::main] in examples/readme.rs");
    let example_imports: Vec<&str> = example_imports
        .lines()
        .filter(|l| !l.starts_with("//"))
        .collect();
    let example_body = example_rest
        .split_once("// README: begin")
        .and_then(|(_, rest)| rest.split_once("// README: end"))
        .map(|(body, _)| body)
        .expect("README markers in examples/readme.rs");
    assert_eq!(
        tokens(readme_imports),
        tokens(&example_imports.join("\n")),
        "the imports of README.md \"Using the library\" and examples/readme.rs differ"
    );
    assert_eq!(
        tokens(&readme_body.join("\n")),
        tokens(example_body),
        "the code of README.md \"Using the library\" and examples/readme.rs differs"
    );
}
