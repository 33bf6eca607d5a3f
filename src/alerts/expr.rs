//! The `when` language of an alert rule: a small boolean expression over the fields of a
//! structured answer.
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | cmp
//! cmp     := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand)?
//! operand := "(" expr ")" | STRING | NUMBER | "true" | "false" | FIELD ("." FIELD)*
//! ```
//! Strings are in double or single quotes (`\"`, `\'` and `\\` escape). A bare operand must be a
//! boolean (a boolean field, `true`, `false`). A hand-written recursive-descent parser: the
//! language is a dozen tokens, and the parser's errors point at the column (`when` is checked by
//! `config check`, where a person reads the message). No expression crate fits: the well-kept
//! ones (evalexpr, rhai, cel) bring their own value types, functions and assignment — more
//! language than a rule needs and more than a schema check can type.
//!
//! In: the rule's text ([`parse`]), the answer's JSON schema ([`Expr::check`], so a field the
//! schema lacks, or a comparison to a value of the wrong type or an enum value the schema lacks,
//! is a config error), the answer ([`Expr::eval`]). Out: whether the rule matches.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExprError {
    #[error("column {col}: {msg}")]
    Syntax { col: usize, msg: String },
    #[error("{0}")]
    Type(String),
    #[error("the answer has no field {0}")]
    Missing(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
    fn ordering(self) -> bool {
        !matches!(self, Op::Eq | Op::Ne)
    }
}

/// A literal or a field of the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Str(String),
    Num(f64),
    Bool(bool),
    /// A dotted path: `gauge.zone` → `["gauge", "zone"]`.
    Field(Vec<String>),
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operand::Str(s) => write!(f, "{s:?}"),
            Operand::Num(n) => write!(f, "{n}"),
            Operand::Bool(b) => write!(f, "{b}"),
            Operand::Field(p) => f.write_str(&p.join(".")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Cmp(Operand, Op, Operand),
    /// A bare operand, used as a boolean.
    Truth(Operand),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Str(String),
    Num(f64),
    Ident(String),
    Op(Op),
    Open,
    Close,
    Dot,
}

fn lex(text: &str) -> Result<Vec<(usize, Tok)>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |col: usize, msg: String| ExprError::Syntax { col: col + 1, msg };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '(' => out.push((start, Tok::Open)),
            ')' => out.push((start, Tok::Close)),
            '.' if !chars.get(i + 1).is_some_and(char::is_ascii_digit) => {
                out.push((start, Tok::Dot))
            }
            '=' | '!' | '<' | '>' => {
                let next_eq = chars.get(i + 1) == Some(&'=');
                let op = match (c, next_eq) {
                    ('=', true) => Op::Eq,
                    ('!', true) => Op::Ne,
                    ('<', true) => Op::Le,
                    ('>', true) => Op::Ge,
                    ('<', false) => Op::Lt,
                    ('>', false) => Op::Gt,
                    ('=', false) => {
                        return Err(err(
                            start,
                            "\"=\" is not an operator; compare with \"==\"".into(),
                        ))
                    }
                    _ => {
                        return Err(err(
                            start,
                            "\"!\" is not an operator; write \"not\" or \"!=\"".into(),
                        ))
                    }
                };
                if next_eq {
                    i += 1;
                }
                out.push((start, Tok::Op(op)));
            }
            '"' | '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "a string is not closed".into())),
                        Some(&q) if q == c => break,
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some(&e @ ('"' | '\'' | '\\')) => s.push(e),
                                _ => {
                                    return Err(err(
                                        i,
                                        "unknown escape (use \\\", \\' or \\\\)".into(),
                                    ))
                                }
                            }
                            i += 2;
                            continue;
                        }
                        Some(&ch) => s.push(ch),
                    }
                    i += 1;
                }
                out.push((start, Tok::Str(s)));
            }
            c if c.is_ascii_digit() || c == '-' || c == '.' => {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit() || matches!(chars[i], '.' | 'e' | 'E'))
                {
                    i += 1;
                }
                let s: String = chars[start..i].iter().collect();
                let n: f64 = s
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite())
                    .ok_or_else(|| err(start, format!("\"{s}\" is not a number")))?;
                out.push((start, Tok::Num(n)));
                continue;
            }
            c if c.is_alphabetic() || c == '_' => {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                out.push((start, Tok::Ident(chars[start..i].iter().collect())));
                continue;
            }
            other => return Err(err(start, format!("unexpected \"{other}\""))),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }
    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(c, _)| *c) + 1
    }
    fn err<T>(&self, msg: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError::Syntax {
            col: self.col(),
            msg: msg.into(),
        })
    }
    fn keyword(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(i)) if i == k)
    }
    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.and()?;
        while self.keyword("or") {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }
    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.not()?;
        while self.keyword("and") {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }
    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.keyword("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let lhs = match self.operand()? {
            Ok(o) => o,
            Err(e) => return Ok(e),
        };
        if let Some(Tok::Op(op)) = self.peek() {
            let op = *op;
            self.pos += 1;
            return match self.operand()? {
                Ok(rhs) => Ok(Expr::Cmp(lhs, op, rhs)),
                Err(_) => self.err(format!(
                    "\"{}\" compares a field or a value, not a parenthesised expression",
                    op.text()
                )),
            };
        }
        Ok(Expr::Truth(lhs))
    }
    /// An operand, or a parenthesised expression.
    fn operand(&mut self) -> Result<Result<Operand, Expr>, ExprError> {
        let Some(t) = self.peek().cloned() else {
            return self.err("the expression ends too early");
        };
        self.pos += 1;
        Ok(Ok(match t {
            Tok::Open => {
                let e = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return self.err("expected \")\"");
                }
                self.pos += 1;
                return Ok(Err(e));
            }
            Tok::Str(s) => Operand::Str(s),
            Tok::Num(n) => Operand::Num(n),
            Tok::Ident(i) if i == "true" => Operand::Bool(true),
            Tok::Ident(i) if i == "false" => Operand::Bool(false),
            Tok::Ident(i) if ["and", "or", "not"].contains(&i.as_str()) => {
                self.pos -= 1;
                return self.err(format!("expected a field or a value, found \"{i}\""));
            }
            Tok::Ident(first) => {
                let mut path = vec![first];
                while self.peek() == Some(&Tok::Dot) {
                    self.pos += 1;
                    match self.peek().cloned() {
                        Some(Tok::Ident(n)) => {
                            path.push(n);
                            self.pos += 1;
                        }
                        _ => return self.err("expected a field name after \".\""),
                    }
                }
                Operand::Field(path)
            }
            other => {
                self.pos -= 1;
                return self.err(format!(
                    "expected a field or a value, found {}",
                    tok_text(&other)
                ));
            }
        }))
    }
}

fn tok_text(t: &Tok) -> String {
    match t {
        Tok::Op(o) => format!("\"{}\"", o.text()),
        Tok::Close => "\")\"".into(),
        Tok::Dot => "\".\"".into(),
        other => format!("{other:?}"),
    }
}

/// Parses a `when` expression.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let toks = lex(text)?;
    if toks.is_empty() {
        return Err(ExprError::Syntax {
            col: 1,
            msg: "the expression is empty".into(),
        });
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: text.chars().count(),
    };
    let e = p.or()?;
    if let Some(t) = p.peek().cloned() {
        return p.err(format!(
            "unexpected {} after a complete expression",
            tok_text(&t)
        ));
    }
    Ok(e)
}

/// What a schema says a field holds.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Str(Option<Vec<String>>),
    Num,
    Bool,
}

impl Ty {
    fn name(&self) -> &'static str {
        match self {
            Ty::Str(_) => "a string",
            Ty::Num => "a number",
            Ty::Bool => "a boolean",
        }
    }
}

/// The type of `path` in `schema`: `Err` says what is wrong (no such field, an object, …).
fn field_type(schema: &Value, path: &[String]) -> Result<Ty, String> {
    let mut s = schema;
    for (i, name) in path.iter().enumerate() {
        s = s
            .get("properties")
            .and_then(|p| p.get(name))
            .ok_or_else(|| {
                let so_far = path[..=i].join(".");
                let known: Vec<String> = s
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|o| o.keys().cloned().collect())
                    .unwrap_or_default();
                format!(
                    "the schema has no field {so_far} (its fields: {})",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
    }
    let name = path.join(".");
    if let Some(values) = s.get("enum").or_else(|| s.get("const").map(|_| s)) {
        let values: Vec<&Value> = match s.get("const") {
            Some(c) => vec![c],
            None => values
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
        };
        if values.iter().all(|v| v.is_string()) {
            return Ok(Ty::Str(Some(
                values
                    .iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect(),
            )));
        }
        if values.iter().all(|v| v.is_number()) {
            return Ok(Ty::Num);
        }
        if values.iter().all(|v| v.is_boolean()) {
            return Ok(Ty::Bool);
        }
        return Err(format!(
            "field {name}: an enum of mixed types cannot be compared"
        ));
    }
    match s.get("type").and_then(Value::as_str) {
        Some("string") => Ok(Ty::Str(None)),
        Some("number" | "integer") => Ok(Ty::Num),
        Some("boolean") => Ok(Ty::Bool),
        Some(other) => Err(format!(
            "field {name} is {other}, not a string, number or boolean"
        )),
        None => Err(format!("field {name} has no type or enum in the schema")),
    }
}

impl Expr {
    /// Checks every field against `schema` (a JSON schema of an object) and every comparison's
    /// types: the errors `config check` reports.
    pub fn check(&self, schema: &Value) -> Result<(), ExprError> {
        let ty = |o: &Operand| -> Result<Ty, ExprError> {
            match o {
                Operand::Str(_) => Ok(Ty::Str(None)),
                Operand::Num(_) => Ok(Ty::Num),
                Operand::Bool(_) => Ok(Ty::Bool),
                Operand::Field(p) => field_type(schema, p).map_err(ExprError::Type),
            }
        };
        match self {
            Expr::Truth(o) => match ty(o)? {
                Ty::Bool => Ok(()),
                t => Err(ExprError::Type(format!(
                    "{o} is {}, not a boolean; compare it (e.g. {o} == …)",
                    t.name()
                ))),
            },
            Expr::Cmp(a, op, b) => {
                if !matches!(a, Operand::Field(_)) && !matches!(b, Operand::Field(_)) {
                    return Err(ExprError::Type(format!(
                        "{a} {} {b} compares two values; name a field of the answer",
                        op.text()
                    )));
                }
                let (ta, tb) = (ty(a)?, ty(b)?);
                if std::mem::discriminant(&ta) != std::mem::discriminant(&tb) {
                    return Err(ExprError::Type(format!(
                        "{a} is {} but {b} is {}",
                        ta.name(),
                        tb.name()
                    )));
                }
                if op.ordering() && ta != Ty::Num {
                    return Err(ExprError::Type(format!(
                        "\"{}\" orders numbers; {a} is {}",
                        op.text(),
                        ta.name()
                    )));
                }
                for (field, lit, t) in [(a, b, &ta), (b, a, &tb)] {
                    if let (Operand::Field(_), Operand::Str(v), _) = (field, lit, t) {
                        if let Ty::Str(Some(values)) = ty(field)? {
                            if !values.contains(v) {
                                return Err(ExprError::Type(format!(
                                    "{field} is never {v:?}: the schema allows {}",
                                    values
                                        .iter()
                                        .map(|v| format!("{v:?}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )));
                            }
                        }
                    }
                }
                Ok(())
            }
            Expr::Not(e) => e.check(schema),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.check(schema)?;
                b.check(schema)
            }
        }
    }

    /// Whether `answer` matches. A field the answer lacks is an error (the constraint makes
    /// required fields present; an optional one left out matches nothing it is compared to).
    pub fn eval(&self, answer: &Value) -> Result<bool, ExprError> {
        match self {
            Expr::Not(e) => Ok(!e.eval(answer)?),
            Expr::And(a, b) => Ok(a.eval(answer)? && b.eval(answer)?),
            Expr::Or(a, b) => Ok(a.eval(answer)? || b.eval(answer)?),
            Expr::Truth(o) => match value(o, answer)? {
                Value::Bool(b) => Ok(b),
                v => Err(ExprError::Type(format!("{o} is {v}, not a boolean"))),
            },
            Expr::Cmp(a, op, b) => {
                let (x, y) = (value(a, answer)?, value(b, answer)?);
                Ok(match (&x, &y) {
                    (Value::Number(p), Value::Number(q)) => {
                        let (p, q) = (
                            p.as_f64().unwrap_or(f64::NAN),
                            q.as_f64().unwrap_or(f64::NAN),
                        );
                        match op {
                            Op::Eq => p == q,
                            Op::Ne => p != q,
                            Op::Lt => p < q,
                            Op::Le => p <= q,
                            Op::Gt => p > q,
                            Op::Ge => p >= q,
                        }
                    }
                    _ if *op == Op::Eq => x == y,
                    _ if *op == Op::Ne => x != y,
                    _ => {
                        return Err(ExprError::Type(format!(
                            "\"{}\" orders numbers; got {x} and {y}",
                            op.text()
                        )))
                    }
                })
            }
        }
    }
}

fn value(o: &Operand, answer: &Value) -> Result<Value, ExprError> {
    Ok(match o {
        Operand::Str(s) => Value::String(s.clone()),
        Operand::Num(n) => serde_json::Number::from_f64(*n)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        Operand::Bool(b) => Value::Bool(*b),
        Operand::Field(p) => {
            let mut v = answer;
            for name in p {
                v = v.get(name).ok_or_else(|| ExprError::Missing(p.join(".")))?;
            }
            v.clone()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "lamp": {"enum": ["green", "amber", "red", "off", "none"]},
            "boxes": {"type": "integer", "minimum": 0, "maximum": 3},
            "ok": {"type": "boolean"},
            "note": {"type": "string"},
            "gauge": {"type": "object", "properties": {"zone": {"enum": ["green", "red"]}}}
        }, "required": ["lamp"]})
    }

    #[test]
    fn precedence_and_parentheses() {
        // not > and > or
        let e = parse("not a == 1 or b == 2 and c == 3").unwrap();
        let f =
            |p: &str, n: f64| Expr::Cmp(Operand::Field(vec![p.into()]), Op::Eq, Operand::Num(n));
        assert_eq!(
            e,
            Expr::Or(
                Box::new(Expr::Not(Box::new(f("a", 1.0)))),
                Box::new(Expr::And(Box::new(f("b", 2.0)), Box::new(f("c", 3.0))))
            )
        );
        let e = parse("(a == 1 or b == 2) and c == 3").unwrap();
        assert!(matches!(e, Expr::And(..)));
    }

    #[test]
    fn literals_and_paths() {
        assert_eq!(
            parse(r#"gauge.zone != 'it\'s'"#).unwrap(),
            Expr::Cmp(
                Operand::Field(vec!["gauge".into(), "zone".into()]),
                Op::Ne,
                Operand::Str("it's".into())
            )
        );
        assert_eq!(
            parse("boxes >= -1.5").unwrap(),
            Expr::Cmp(
                Operand::Field(vec!["boxes".into()]),
                Op::Ge,
                Operand::Num(-1.5)
            )
        );
        assert_eq!(
            parse("ok").unwrap(),
            Expr::Truth(Operand::Field(vec!["ok".into()]))
        );
        assert_eq!(parse("true").unwrap(), Expr::Truth(Operand::Bool(true)));
    }

    #[test]
    fn syntax_errors_name_the_column() {
        for (text, col, what) in [
            ("lamp = \"red\"", 6, "\"==\""),
            ("lamp == ", 9, "ends too early"),
            ("lamp == \"red", 9, "not closed"),
            ("(lamp == 1", 11, "expected \")\""),
            ("lamp == 1 2", 11, "after a complete expression"),
            ("lamp == and", 9, "found \"and\""),
            ("", 1, "empty"),
            ("lamp ! 1", 6, "not"),
            ("a. == 1", 4, "after \".\""),
            ("lamp == #", 9, "unexpected \"#\""),
        ] {
            match parse(text) {
                Err(ExprError::Syntax { col: c, msg }) => {
                    assert_eq!(c, col, "{text}: {msg}");
                    assert!(msg.contains(what), "{text}: {msg}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn check_against_the_schema() {
        let s = schema();
        for ok in [
            "lamp == \"red\"",
            "\"red\" == lamp",
            "boxes == 0",
            "boxes < 2 and not ok",
            "gauge.zone == \"red\" or note != \"x\"",
            "lamp == \"red\" and (boxes >= 1 or ok == true)",
        ] {
            parse(ok)
                .unwrap()
                .check(&s)
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, what) in [
            (
                "colour == \"red\"",
                "no field colour (its fields: lamp, boxes, ok, note, gauge)",
            ),
            ("lamp == \"purple\"", "never \"purple\""),
            ("lamp == 3", "a string but 3 is a number"),
            ("boxes == \"two\"", "a number but \"two\" is a string"),
            ("lamp < \"red\"", "orders numbers"),
            ("boxes", "not a boolean"),
            ("gauge == 1", "is object"),
            ("gauge.level == 1", "no field gauge.level"),
            ("1 == 1", "two values"),
        ] {
            let e = parse(bad).unwrap().check(&s).unwrap_err().to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
    }

    #[test]
    fn eval_on_answers() {
        let cases = [
            ("lamp == \"red\"", json!({"lamp": "red"}), true),
            ("lamp == \"red\"", json!({"lamp": "green"}), false),
            ("lamp != \"red\"", json!({"lamp": "green"}), true),
            ("boxes == 0", json!({"boxes": 0}), true),
            ("boxes == 0", json!({"boxes": 0.0}), true),
            ("boxes < 2", json!({"boxes": 1}), true),
            ("boxes <= 1", json!({"boxes": 2}), false),
            ("boxes > 1 and boxes >= 2", json!({"boxes": 2}), true),
            ("not ok", json!({"ok": false}), true),
            (
                "ok or lamp == \"red\"",
                json!({"ok": false, "lamp": "red"}),
                true,
            ),
            (
                "gauge.zone == \"red\"",
                json!({"gauge": {"zone": "red"}}),
                true,
            ),
        ];
        for (text, answer, want) in cases {
            assert_eq!(
                parse(text).unwrap().eval(&answer).unwrap(),
                want,
                "{text} on {answer}"
            );
        }
        assert_eq!(
            parse("lamp == \"red\"").unwrap().eval(&json!({})),
            Err(ExprError::Missing("lamp".into()))
        );
    }
}
