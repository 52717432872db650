//! Prints the fast tier's category scores for each line of standard input (a dev aid);
//! `PROBE_VIEWS=1` also prints each normalized view and the model's strongest score on it;
//! `PROBE_HOMOGLYPH=1` reads each line with look-alike letters swapped in first.
#![allow(clippy::print_stdout, missing_docs)]
use std::io::BufRead;
use stormwall_safety::{Category, Screener};
fn main() -> Result<(), stormwall_safety::SafetyError> {
    let s = Screener::builtin()?;
    let views = std::env::var_os("PROBE_VIEWS").is_some();
    let homo = std::env::var_os("PROBE_HOMOGLYPH").is_some();
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let line = if homo {
            stormwall_safety::Transform::Homoglyph.apply(&line, 7)
        } else {
            line
        };
        let a = s.analyze(&line);
        let top: Vec<String> = Category::ALL
            .iter()
            .filter(|c| a.score(**c) >= 0.2)
            .map(|c| format!("{}={:.2}", c.as_str(), a.score(*c)))
            .collect();
        println!("{line:?}: {}", top.join(" "));
        if views && let Some(m) = s.model() {
            for v in &stormwall_safety::normalize::normalize(&line).views {
                let mut out = [0.0f32; stormwall_safety::CATEGORY_COUNT];
                m.score_into(v.text(), &mut Default::default(), &mut out);
                let best = out.iter().copied().fold(0.0f32, f32::max);
                println!("  {:9} {best:.3} {:?}", v.kind().as_str(), v.text());
            }
        }
    }
    Ok(())
}
