//! The text of the prefix-cache workloads: [`document`], a deterministic English-like
//! document sent as the shared system message; [`question`], a short question that differs per
//! index; and [`Conversation`], a multi-turn chat's history (the server's own answers included)
//! from which each turn's `messages` are built. Plain lower-case words from small lists, so a
//! large vocabulary (Gemma's, Llama 3's) spends about one token a word: with the punctuation,
//! 1.14 tokens a word on Gemma 3.

use serde_json::{json, Value};

/// Words of the default document: about 1,050 tokens on Gemma 3's tokenizer
/// (`tests/bench.rs` checks the range 1,000–1,100 against the served model).
pub const DOCUMENT_WORDS_DEFAULT: usize = 920;
/// Seed of `ryzanstein bench`'s document: the same text on every run and every server.
pub const DOCUMENT_SEED: u64 = 0xD0C;
/// Longest document asked for, in words: beyond this it is a typo.
pub const DOCUMENT_WORDS_MAX: usize = 100_000;
/// Sentences per paragraph.
const PARAGRAPH_SENTENCES: usize = 6;

const NOUNS: &[&str] = &[
    "river",
    "harbour",
    "council",
    "market",
    "library",
    "bridge",
    "orchard",
    "mill",
    "school",
    "railway",
    "warehouse",
    "garden",
    "village",
    "forest",
    "museum",
    "workshop",
    "clinic",
    "farm",
    "festival",
    "lighthouse",
    "canal",
    "bakery",
    "theatre",
    "quarry",
    "station",
    "square",
    "meadow",
    "valley",
    "tower",
    "archive",
];
const ADJECTIVES: &[&str] = &[
    "old", "new", "quiet", "busy", "narrow", "wide", "northern", "southern", "small", "large",
    "careful", "early", "public", "local", "wooden", "stone", "bright", "steady", "modest",
    "ancient", "famous", "remote", "crowded", "simple",
];
const VERBS: &[&str] = &[
    "repaired",
    "visited",
    "described",
    "measured",
    "opened",
    "closed",
    "funded",
    "built",
    "moved",
    "studied",
    "praised",
    "replaced",
    "expanded",
    "inspected",
    "recorded",
    "supplied",
    "protected",
    "improved",
    "planned",
    "shared",
];
const PREPOSITIONS: &[&str] = &[
    "near", "beside", "behind", "across", "along", "around", "beyond", "under",
];
const OPENERS: &[&str] = &[
    "Later",
    "Meanwhile",
    "Eventually",
    "Often",
    "Today",
    "Last year",
    "In spring",
    "In winter",
];

/// Picks one word of `list` with the generator `rng`.
fn pick(list: &'static [&'static str], rng: &mut u64) -> &'static str {
    list[(super::next_u64(rng) % list.len() as u64) as usize]
}

/// One sentence, from one of five shapes.
fn sentence(rng: &mut u64) -> String {
    let (n, a, v, p) = (NOUNS, ADJECTIVES, VERBS, PREPOSITIONS);
    match super::next_u64(rng) % 5 {
        0 => format!(
            "The {} {} {} the {} {} the {}.",
            pick(a, rng),
            pick(n, rng),
            pick(v, rng),
            pick(n, rng),
            pick(p, rng),
            pick(n, rng)
        ),
        1 => format!(
            "{}, the {} {} the {} {}, and the {} {} the {}.",
            pick(OPENERS, rng),
            pick(n, rng),
            pick(v, rng),
            pick(a, rng),
            pick(n, rng),
            pick(n, rng),
            pick(v, rng),
            pick(n, rng)
        ),
        2 => format!(
            "Because the {} was {}, the council {} the {} {} the {} {}.",
            pick(n, rng),
            pick(a, rng),
            pick(v, rng),
            pick(n, rng),
            pick(p, rng),
            pick(a, rng),
            pick(n, rng)
        ),
        3 => format!(
            "Most of the people {} the {} said that the {} was {} and {}.",
            pick(p, rng),
            pick(n, rng),
            pick(n, rng),
            pick(a, rng),
            pick(a, rng)
        ),
        _ => format!(
            "A {} report {} how the {} {} the {} {} the {}.",
            pick(a, rng),
            pick(v, rng),
            pick(n, rng),
            pick(v, rng),
            pick(n, rng),
            pick(p, rng),
            pick(n, rng)
        ),
    }
}

/// A document of at least `words` words (it ends at the first sentence end past them), the
/// same for the same `seed`: a title line, then paragraphs of a few sentences.
pub fn document(words: usize, seed: u64) -> String {
    let mut rng = seed;
    let mut out = String::from("Report on the town of Ryzwick and its valley.\n\n");
    let mut n_words = out.split_whitespace().count();
    let mut n_sentences = 0;
    while n_words < words {
        if n_sentences > 0 {
            out.push_str(if n_sentences % PARAGRAPH_SENTENCES == 0 {
                "\n\n"
            } else {
                " "
            });
        }
        let s = sentence(&mut rng);
        n_words += s.split_whitespace().count();
        out.push_str(&s);
        n_sentences += 1;
    }
    out
}

/// Question `index` (counted from 0): numbered, so no two indexes give the same text, and
/// about a place of the document chosen from the index.
pub fn question(index: usize) -> String {
    let mut rng = (index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0x51_7CC1;
    let (a, n) = (pick(ADJECTIVES, &mut rng), pick(NOUNS, &mut rng));
    let number = index + 1;
    match super::next_u64(&mut rng) % 3 {
        0 => format!("Question {number}: what does the document say about the {a} {n}?"),
        1 => format!("Question {number}: who worked near the {n}, and what did they do?"),
        _ => format!("Question {number}: in one sentence, why does the report mention the {n}?"),
    }
}

/// A multi-turn chat: the document as the system message, then alternating user questions and
/// the assistant's answers as the server returned them.
#[derive(Clone, Debug)]
pub struct Conversation {
    messages: Vec<Value>,
}

impl Conversation {
    pub fn new(document: &str) -> Conversation {
        Conversation {
            messages: vec![json!({ "role": "system", "content": document })],
        }
    }

    /// Adds the next user question; the messages then end with it, ready to send.
    pub fn ask(&mut self, question: String) {
        assert!(
            self.messages.last().is_some_and(|m| m["role"] != "user"),
            "a question follows the system message or an answer"
        );
        self.messages
            .push(json!({ "role": "user", "content": question }));
    }

    /// Adds the server's answer to the last question.
    pub fn answer(&mut self, text: String) {
        assert!(
            self.messages.last().is_some_and(|m| m["role"] == "user"),
            "an answer follows a question"
        );
        self.messages
            .push(json!({ "role": "assistant", "content": text }));
    }

    /// The `messages` of the next request: the whole history.
    pub fn messages(&self) -> &[Value] {
        &self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_deterministic_and_as_long_as_asked() {
        let d = document(DOCUMENT_WORDS_DEFAULT, 7);
        assert_eq!(d, document(DOCUMENT_WORDS_DEFAULT, 7));
        assert_ne!(d, document(DOCUMENT_WORDS_DEFAULT, 8));
        let words = d.split_whitespace().count();
        // It stops at the first sentence end past the asked count (sentences are < 20 words).
        assert!(
            (DOCUMENT_WORDS_DEFAULT..DOCUMENT_WORDS_DEFAULT + 20).contains(&words),
            "{words}"
        );
        assert!(d.contains("\n\n") && d.ends_with('.'));
        assert!(d.is_ascii(), "plain words only");
        let short = document(1, 7);
        assert!(short.starts_with("Report on") && short.split_whitespace().count() < 30);
    }

    #[test]
    fn questions_are_distinct_and_stable() {
        let qs: Vec<String> = (0..1000).map(question).collect();
        let unique: std::collections::BTreeSet<&String> = qs.iter().collect();
        assert_eq!(unique.len(), qs.len());
        assert_eq!(qs[16], question(16));
        assert!(qs[16].starts_with("Question 17: ") && qs[16].ends_with('?'));
        // Not all of one shape.
        assert!(qs.iter().any(|q| q.contains("what does the document say")));
        assert!(qs.iter().any(|q| q.contains("in one sentence")));
    }

    #[test]
    fn a_conversation_grows_by_a_question_and_its_answer_per_turn() {
        let doc = document(30, 1);
        let mut c = Conversation::new(&doc);
        for turn in 0..4 {
            c.ask(question(turn));
            let m = c.messages();
            assert_eq!(m.len(), 2 + 2 * turn);
            assert_eq!(
                (&m[0]["role"], &m[0]["content"]),
                (&json!("system"), &json!(doc))
            );
            assert_eq!(m[m.len() - 1]["content"], json!(question(turn)));
            c.answer(format!("answer {turn}"));
        }
        let roles: Vec<&str> = c.messages()[1..]
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant"].repeat(4));
        assert_eq!(c.messages()[8]["content"], json!("answer 3"));
    }

    #[test]
    #[should_panic(expected = "an answer follows a question")]
    fn answers_without_a_question_are_bugs() {
        Conversation::new("doc").answer("x".into());
    }
}
