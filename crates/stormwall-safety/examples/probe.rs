//! Prints the fast tier's category scores for each line of standard input (a dev aid).
#![allow(clippy::print_stdout, missing_docs)]
use std::io::BufRead;
use stormwall_safety::{Category, Screener};
fn main() -> Result<(), stormwall_safety::SafetyError> {
    let s = Screener::builtin()?;
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let a = s.analyze(&line);
        let top: Vec<String> = Category::ALL
            .iter()
            .filter(|c| a.score(**c) >= 0.2)
            .map(|c| format!("{}={:.2}", c.as_str(), a.score(*c)))
            .collect();
        println!("{line:?}: {}", top.join(" "));
    }
    Ok(())
}
