//! Alert rules as the config gives them (`[[cameras.alerts]]`) and as gemba runs them.
//!
//! In: [`RawAlert`]s of one camera, from the config's schema. Out: validated [`AlertRule`]s —
//! the question, the constraint its answer is held to ([`ResponseFormat`]), the parsed `when`,
//! the hysteresis counts and the severity — or a config error naming the camera and the rule.
//!
//! Two forms: a JSON schema with a `when` expression over the answer's fields
//! ([`super::expr`]), or no schema and `when = "yes"` / `"no"`, which holds the answer to the
//! choice `["yes", "no"]`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::expr::{self, Expr};
use crate::model::constrain::ResponseFormat;

/// One `[[cameras.alerts]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlert {
    pub name: String,
    /// Sent to the model exactly as written (gemba adds no instruction).
    pub question: String,
    /// A JSON schema of an object (as a TOML table); absent for the yes/no form.
    pub schema: Option<toml::Value>,
    /// An expression over the answer's fields, or `"yes"` / `"no"` without a schema.
    pub when: String,
    /// Consecutive matching looks before the alert is raised (default 2).
    pub raise_after: Option<u32>,
    /// Consecutive looks that do not match before a raised alert clears (default 2).
    pub clear_after: Option<u32>,
    /// `info`, `warning` or `critical` (default `warning`).
    pub severity: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn word(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// When a rule matches.
#[derive(Debug, Clone, PartialEq)]
pub enum When {
    /// An expression over the structured answer.
    Expr(Expr),
    /// The yes/no form: the answer is exactly this choice.
    Choice(String),
}

/// A validated rule.
#[derive(Debug, Clone, Serialize)]
pub struct AlertRule {
    pub name: String,
    pub question: String,
    pub format: ResponseFormat,
    /// As written in the config.
    pub when_text: String,
    #[serde(skip)]
    pub when: When,
    pub raise_after: u32,
    pub clear_after: u32,
    pub severity: Severity,
}

/// Why an answer could not be judged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer is not JSON ({0})")]
    NotJson(String),
    #[error("the answer is not one of the choices: {0:?}")]
    NotAChoice(String),
    #[error(transparent)]
    Expr(#[from] expr::ExprError),
}

impl AlertRule {
    /// Judges an answer: `Ok((matched, structured answer))`. The yes/no form's structured answer
    /// is the choice as a JSON string.
    pub fn judge(&self, answer: &str) -> Result<(bool, Value), AnswerError> {
        match &self.when {
            When::Choice(want) => {
                let a = answer.trim();
                let choices = match &self.format {
                    ResponseFormat::Choice { choices } => choices.as_slice(),
                    _ => &[],
                };
                // Unconstrained text (a model without the mask) still counts when it starts with a
                // choice as a word ("Yes, the lamp is red.").
                let got = choices.iter().find(|c| {
                    a == c.as_str()
                        || a.to_lowercase()
                            .strip_prefix(c.as_str())
                            .is_some_and(|rest| rest.starts_with(|ch: char| !ch.is_alphanumeric()))
                });
                match got {
                    Some(c) => Ok((c == want, Value::String(c.clone()))),
                    None => Err(AnswerError::NotAChoice(a.chars().take(80).collect())),
                }
            }
            When::Expr(e) => {
                let v: Value = serde_json::from_str(answer.trim())
                    .map_err(|err| AnswerError::NotJson(err.to_string()))?;
                Ok((e.eval(&v)?, v))
            }
        }
    }
}

/// Validates one camera's rules; `Err((key, message))` names the rule's key
/// (`cameras[0].alerts[1].when`) and says which camera and rule.
pub fn validate(
    camera_index: usize,
    camera: &str,
    raw: Vec<RawAlert>,
) -> Result<Vec<AlertRule>, (String, String)> {
    let mut out: Vec<AlertRule> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("cameras[{camera_index}].alerts[{i}].{k}");
        let who = format!("camera \"{camera}\", rule \"{}\"", r.name);
        let bad = |k: &str, msg: String| (key(k), format!("{who}: {msg}"));
        if r.name.is_empty()
            || !r
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad(
                "name",
                "a rule name must be letters, digits, '-' or '_' (it names the report trigger alert:NAME)".into(),
            ));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(bad(
                "name",
                "another rule of this camera has the same name".into(),
            ));
        }
        if r.question.trim().is_empty() {
            return Err(bad("question", "the question is empty".into()));
        }
        let severity = match &r.severity {
            None => Severity::Warning,
            Some(s) => Severity::parse(s).ok_or_else(|| {
                bad(
                    "severity",
                    format!("\"{s}\" is not a severity (info, warning, critical)"),
                )
            })?,
        };
        let mut counts = [0u32; 2];
        for (n, (k, v)) in [
            ("raise_after", r.raise_after),
            ("clear_after", r.clear_after),
        ]
        .into_iter()
        .enumerate()
        {
            let v = v.unwrap_or(2);
            if !(1..=1000).contains(&v) {
                return Err(bad(k, format!("{v} is out of range 1–1000 (looks)")));
            }
            counts[n] = v;
        }
        let (format, when) = match r.schema {
            None => {
                let w = r.when.trim();
                if w != "yes" && w != "no" {
                    return Err(bad(
                        "when",
                        format!("without a schema, when must be \"yes\" or \"no\" (the answer is held to the choice yes/no), not {:?}; or give a schema", r.when),
                    ));
                }
                (
                    ResponseFormat::Choice {
                        choices: vec!["yes".into(), "no".into()],
                    },
                    When::Choice(w.to_string()),
                )
            }
            Some(s) => {
                let schema = serde_json::to_value(&s)
                    .map_err(|e| bad("schema", format!("cannot be read as JSON: {e}")))?;
                check_schema(&schema, "schema")
                    .map_err(|m| bad("schema", format!("invalid schema: {m}")))?;
                if schema.get("type").and_then(Value::as_str) != Some("object")
                    || !schema.get("properties").is_some_and(Value::is_object)
                {
                    return Err(bad(
                        "schema",
                        "the schema must describe an object with properties (type = \"object\", properties = { … }) for when to name its fields".into(),
                    ));
                }
                satisfiable(&schema, "schema")
                    .map_err(|m| bad("schema", format!("no answer can satisfy the schema: {m}")))?;
                let e =
                    expr::parse(&r.when).map_err(|e| bad("when", format!("{:?}: {e}", r.when)))?;
                e.check(&schema)
                    .map_err(|e| bad("when", format!("{:?}: {e}", r.when)))?;
                // The answer in one fixed form (`{"lamp": "red"}`, as json.dumps writes it and
                // the demo model learnt it), compiled once here so that a schema the grammar
                // cannot take is refused by `config check`, not at the first look.
                let format = ResponseFormat::json_schema_compact(closed(schema));
                format
                    .validate()
                    .map_err(|e| bad("schema", e.to_string()))?;
                (format, When::Expr(e))
            }
        };
        out.push(AlertRule {
            name: r.name,
            question: r.question,
            format,
            when_text: r.when,
            when,
            raise_after: counts[0],
            clear_after: counts[1],
            severity,
        });
    }
    Ok(out)
}

/// The schema with `additionalProperties = false` on every object that does not say otherwise:
/// an alert's answer holds the rule's fields and ends there (a JSON schema's default lets the
/// model go on writing keys of its own until it runs out of tokens).
fn closed(mut schema: Value) -> Value {
    fn walk(v: &mut Value) {
        let Some(o) = v.as_object_mut() else { return };
        if o.get("type").and_then(Value::as_str) == Some("object") {
            o.entry("additionalProperties")
                .or_insert(Value::Bool(false));
        }
        if let Some(Value::Object(props)) = o.get_mut("properties") {
            props.values_mut().for_each(walk);
        }
        if let Some(items) = o.get_mut("items") {
            walk(items);
        }
    }
    walk(&mut schema);
    schema
}

const TYPES: [&str; 7] = [
    "object", "string", "number", "integer", "boolean", "array", "null",
];
const KEYWORDS: [&str; 19] = [
    "type",
    "enum",
    "const",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "description",
    "title",
    "default",
];

/// Structural check of the JSON-schema subset an alert answer uses: known keywords (a typo is
/// an error, not a silently unconstrained field), well-formed values.
fn check_schema(s: &Value, at: &str) -> Result<(), String> {
    let o = s
        .as_object()
        .ok_or_else(|| format!("{at} must be a table (a schema), not {s}"))?;
    for (k, v) in o {
        let here = format!("{at}.{k}");
        match k.as_str() {
            "type" => {
                let names: Vec<&Value> = match v {
                    Value::Array(a) => a.iter().collect(),
                    v => vec![v],
                };
                for n in names {
                    if !n.as_str().is_some_and(|n| TYPES.contains(&n)) {
                        return Err(format!(
                            "{here}: {n} is not a JSON type ({})",
                            TYPES.join(", ")
                        ));
                    }
                }
            }
            "enum" => {
                if !v.is_array() {
                    return Err(format!("{here} must be a list"));
                }
            }
            "properties" => {
                let p = v
                    .as_object()
                    .ok_or_else(|| format!("{here} must be a table of schemas"))?;
                for (name, sub) in p {
                    check_schema(sub, &format!("{here}.{name}"))?;
                }
            }
            "items" => check_schema(v, &here)?,
            "additionalProperties" => {
                if !v.is_boolean() {
                    check_schema(v, &here)?;
                }
            }
            "required" => {
                let names = v
                    .as_array()
                    .filter(|a| a.iter().all(Value::is_string))
                    .ok_or_else(|| format!("{here} must be a list of property names"))?;
                let props = o.get("properties").and_then(Value::as_object);
                for n in names.iter().filter_map(Value::as_str) {
                    if !props.is_some_and(|p| p.contains_key(n)) {
                        return Err(format!("{here} names \"{n}\", which properties lacks"));
                    }
                }
            }
            "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                if !v.is_number() {
                    return Err(format!("{here} must be a number"));
                }
            }
            "minItems" | "maxItems" | "minLength" | "maxLength" => {
                if !v.is_u64() {
                    return Err(format!("{here} must be a whole number ≥ 0"));
                }
            }
            "pattern" | "description" | "title" => {
                if !v.is_string() {
                    return Err(format!("{here} must be a string"));
                }
            }
            "const" | "default" => {}
            other => {
                return Err(format!(
                    "{at}: unknown keyword \"{other}\" (gemba's alert schemas use: {})",
                    KEYWORDS.join(", ")
                ))
            }
        }
    }
    Ok(())
}

/// Whether some value satisfies `s` (for the subset [`check_schema`] accepts): an empty enum, a
/// minimum above the maximum, an enum of values of another type, a required property that
/// nothing satisfies — each makes every answer invalid, and a constrained decoder could not
/// produce one.
fn satisfiable(s: &Value, at: &str) -> Result<(), String> {
    let num = |k: &str| s.get(k).and_then(Value::as_f64);
    let types: Vec<&str> = match s.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if s.get("type").is_some() && types.is_empty() {
        return Err(format!("{at}.type is an empty list"));
    }
    let of_type = |v: &Value| {
        types.is_empty()
            || types.iter().any(|t| match *t {
                "string" => v.is_string(),
                "number" => v.is_number(),
                "integer" => v.as_f64().is_some_and(|f| f.fract() == 0.0),
                "boolean" => v.is_boolean(),
                "null" => v.is_null(),
                "object" => v.is_object(),
                "array" => v.is_array(),
                _ => false,
            })
    };
    let in_range = |v: &Value| match v.as_f64() {
        Some(f) => {
            num("minimum").is_none_or(|m| f >= m)
                && num("maximum").is_none_or(|m| f <= m)
                && num("exclusiveMinimum").is_none_or(|m| f > m)
                && num("exclusiveMaximum").is_none_or(|m| f < m)
        }
        None => true,
    };
    if let Some(values) = s.get("enum").and_then(Value::as_array) {
        if values.is_empty() {
            return Err(format!("{at}.enum is empty"));
        }
        if !values.iter().any(|v| of_type(v) && in_range(v)) {
            return Err(format!(
                "no value of {at}.enum is of its type {} within its bounds",
                types.join("/")
            ));
        }
    }
    if let Some(c) = s.get("const") {
        if !of_type(c) || !in_range(c) {
            return Err(format!(
                "{at}.const is not of its type or within its bounds"
            ));
        }
    }
    let lo = num("minimum")
        .or(num("exclusiveMinimum"))
        .unwrap_or(f64::NEG_INFINITY);
    let hi = num("maximum")
        .or(num("exclusiveMaximum"))
        .unwrap_or(f64::INFINITY);
    let strict = num("exclusiveMinimum").is_some() || num("exclusiveMaximum").is_some();
    if lo > hi || (strict && lo >= hi) {
        return Err(format!("{at}: the minimum is above the maximum"));
    }
    if types == ["integer"] && lo.is_finite() && hi.is_finite() && lo.ceil() > hi.floor() {
        return Err(format!("{at}: no integer lies between {lo} and {hi}"));
    }
    for (a, b) in [("minLength", "maxLength"), ("minItems", "maxItems")] {
        if let (Some(x), Some(y)) = (num(a), num(b)) {
            if x > y {
                return Err(format!("{at}.{a} is above {at}.{b}"));
            }
        }
    }
    if let (Some(req), Some(props)) = (
        s.get("required").and_then(Value::as_array),
        s.get("properties").and_then(Value::as_object),
    ) {
        for n in req.iter().filter_map(Value::as_str) {
            if let Some(p) = props.get(n) {
                satisfiable(p, &format!("{at}.properties.{n}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawAlert {
        toml::from_str(toml_text).unwrap()
    }

    fn err(toml_text: &str) -> (String, String) {
        validate(1, "press-1", vec![raw(toml_text)]).unwrap_err()
    }

    const LAMP: &str = r#"
name = "lamp-red"
question = "What colour is the status lamp?"
schema = { type = "object", properties = { lamp = { enum = ["green", "amber", "red", "off", "none"] } }, required = ["lamp"] }
when = 'lamp == "red"'
raise_after = 2
clear_after = 3
severity = "critical"
"#;

    #[test]
    fn the_demo_rule_and_the_yes_no_form_validate() {
        let r = validate(0, "cam", vec![raw(LAMP)]).unwrap();
        assert_eq!(r[0].severity, Severity::Critical);
        assert_eq!((r[0].raise_after, r[0].clear_after), (2, 3));
        let ResponseFormat::JsonSchema { schema } = &r[0].format else {
            panic!("{:?}", r[0].format)
        };
        assert_eq!(
            schema["additionalProperties"], false,
            "the answer ends after the rule's fields: {schema}"
        );
        assert!(r[0].judge(r#"{"lamp": "red"}"#).unwrap().0);
        assert!(!r[0].judge(r#"{"lamp": "green"}"#).unwrap().0);
        assert!(matches!(
            r[0].judge("The lamp is red."),
            Err(AnswerError::NotJson(_))
        ));

        let yn = validate(
            0,
            "cam",
            vec![raw("name = \"fence\"\nquestion = \"Is anyone inside the safety fence?\"\nwhen = \"yes\"")],
        )
        .unwrap();
        assert_eq!(
            yn[0].format,
            ResponseFormat::Choice {
                choices: vec!["yes".into(), "no".into()]
            }
        );
        assert_eq!(yn[0].severity, Severity::Warning);
        assert_eq!(
            yn[0].judge("yes").unwrap(),
            (true, Value::String("yes".into()))
        );
        assert!(!yn[0].judge("no").unwrap().0);
        assert!(yn[0].judge("Yes, someone is.").unwrap().0);
        assert!(yn[0].judge("maybe").is_err());
        assert!(yn[0].judge("yesterday").is_err());
    }

    #[test]
    fn bad_rules_name_the_key_camera_and_rule() {
        let cases: &[(&str, &str, &str)] = &[
            (
                &LAMP.replace("critical", "urgent"),
                "severity",
                "\"urgent\" is not a severity (info, warning, critical)",
            ),
            (
                &LAMP.replace("lamp == \"red\"", "colour == \"red\""),
                "when",
                "no field colour",
            ),
            (
                &LAMP.replace("lamp == \"red\"", "lamp == \"blue\""),
                "when",
                "never \"blue\"",
            ),
            (
                &LAMP.replace("lamp == \"red\"", "lamp == 1"),
                "when",
                "a string but 1 is a number",
            ),
            (
                &LAMP.replace(
                    "enum = [\"green\", \"amber\", \"red\", \"off\", \"none\"]",
                    "enum = []",
                ),
                "schema",
                "enum is empty",
            ),
            (
                &LAMP.replace("enum = [", "enumm = ["),
                "schema",
                "unknown keyword \"enumm\"",
            ),
            (
                &LAMP.replace("type = \"object\"", "type = \"thing\""),
                "schema",
                "not a JSON type",
            ),
            (
                &LAMP.replace("required = [\"lamp\"]", "required = [\"bulb\"]"),
                "schema",
                "names \"bulb\"",
            ),
            (
                &LAMP.replace("raise_after = 2", "raise_after = 0"),
                "raise_after",
                "out of range",
            ),
            (
                &LAMP.replace("lamp == \"red\"", "lamp = \"red\""),
                "when",
                "column 6",
            ),
            (
                &LAMP.replace("name = \"lamp-red\"", "name = \"lamp red\""),
                "name",
                "letters",
            ),
        ];
        for (text, key, what) in cases {
            let (k, msg) = err(text);
            assert_eq!(k, format!("cameras[1].alerts[0].{key}"), "{msg}");
            assert!(msg.contains("camera \"press-1\""), "{msg}");
            assert!(msg.contains(what), "{msg} lacks {what}");
        }
        let (k, msg) = err("name = \"x\"\nquestion = \"Is it?\"\nwhen = \"maybe\"");
        assert_eq!(k, "cameras[1].alerts[0].when");
        assert!(msg.contains("\"yes\" or \"no\""), "{msg}");
    }

    #[test]
    fn unsatisfiable_schemas_are_refused() {
        for s in [
            "{ type = \"object\", properties = { n = { type = \"integer\", minimum = 3, maximum = 1 } }, required = [\"n\"] }",
            "{ type = \"object\", properties = { n = { type = \"integer\", minimum = 1.2, maximum = 1.8 } }, required = [\"n\"] }",
            "{ type = \"object\", properties = { n = { type = \"string\", enum = [1, 2] } }, required = [\"n\"] }",
            "{ type = \"object\", properties = { n = { type = \"string\", minLength = 5, maxLength = 2 } }, required = [\"n\"] }",
        ] {
            let text = format!("name = \"r\"\nquestion = \"q\"\nschema = {s}\nwhen = \"n == 1\"");
            let (k, msg) = err(&text);
            assert_eq!(k, "cameras[1].alerts[0].schema", "{msg}");
            assert!(msg.contains("no answer can satisfy"), "{msg}");
        }
    }

    #[test]
    fn duplicate_names_in_a_camera() {
        let (k, msg) = validate(0, "cam", vec![raw(LAMP), raw(LAMP)]).unwrap_err();
        assert_eq!(k, "cameras[0].alerts[1].name");
        assert!(msg.contains("same name"), "{msg}");
    }
}
