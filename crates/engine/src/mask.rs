//! What the engines' masking shares: how much of the original values is sampled for the
//! residue check, and the names the `name` strategy picks from (doc/MASKING.md).

/// How many original values of each rule are kept to look for.
pub const SAMPLE: usize = 20;
/// The shortest original value looked for: shorter ones occur by chance in any file.
pub const MIN_NEEDLE: usize = 8;
/// The most of a script's output kept.
pub const MAX_OUTPUT: usize = 64 << 10;

/// First names for the `name` strategy.
pub const FIRST_NAMES: [&str; 24] = [
    "Ada",
    "Alan",
    "Barbara",
    "Claude",
    "Dana",
    "Edsger",
    "Frances",
    "Grace",
    "Hedy",
    "Ivan",
    "Joan",
    "Ken",
    "Linus",
    "Margaret",
    "Niklaus",
    "Olga",
    "Peter",
    "Radia",
    "Sophie",
    "Tim",
    "Ursula",
    "Vint",
    "Whitfield",
    "Yukihiro",
];
/// Last names for the `name` strategy.
pub const LAST_NAMES: [&str; 24] = [
    "Lovelace",
    "Turing",
    "Liskov",
    "Shannon",
    "Scott",
    "Dijkstra",
    "Allen",
    "Hopper",
    "Lamarr",
    "Sutherland",
    "Clarke",
    "Thompson",
    "Torvalds",
    "Hamilton",
    "Wirth",
    "Taussky",
    "Naur",
    "Perlman",
    "Wilson",
    "Berners",
    "Franklin",
    "Cerf",
    "Diffie",
    "Matsumoto",
];

/// A script's output as a report keeps it: its first [`MAX_OUTPUT`] bytes, cut at a
/// character's boundary, and a note that it was cut.
pub fn cut_output(mut output: String) -> String {
    if output.len() > MAX_OUTPUT {
        let mut cut = MAX_OUTPUT;
        while !output.is_char_boundary(cut) {
            cut -= 1;
        }
        output.truncate(cut);
        output.push_str("\n[cut at 64 KiB]");
    }
    output
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_output_is_cut_at_a_character() {
        assert_eq!(super::cut_output("short".into()), "short");
        let long = "é".repeat(super::MAX_OUTPUT);
        let cut = super::cut_output(long);
        assert!(cut.ends_with("[cut at 64 KiB]") && cut.len() <= super::MAX_OUTPUT + 20, "{}", cut.len());
    }
}
