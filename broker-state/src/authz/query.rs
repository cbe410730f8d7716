//! Client group queries: Event Grid's filter language over a client's
//! authentication name and attributes.
//!
//! # Grammar
//!
//! ```text
//! query      = "$all" | or
//! or         = and { "or" and }
//! and        = not { "and" not }
//! not        = "not" not | primary
//! primary    = "(" or ")" | comparison
//! comparison = field op value | field "in" "[" value { "," value } "]"
//! field      = "authenticationName" | "attributes." key
//! key        = 1*( ASCII letter | digit | "_" | "-" )
//! op         = "=" | "!=" | "<>" | "<" | ">" | "<=" | ">="
//! value      = string | integer
//! string     = "'" { any character except "'" | "''" } "'"
//! integer    = [ "-" ] 1*digit            (an i64)
//! ```
//!
//! Keywords (`and`, `or`, `not`, `in`), `$all`, `authenticationName` and the
//! `attributes.` prefix are case-insensitive; attribute keys are compared exactly,
//! as the client's attributes spell them. Whitespace (spaces, tabs, newlines)
//! separates tokens. `not` binds tighter than `and`, which binds tighter than `or`.
//!
//! # Semantics
//!
//! Two-valued and explicit, so an operator can predict every answer:
//!
//! - a comparison on a missing attribute (or on `authenticationName` when the
//!   client has none) is **false**, whatever the operator, `!=` and `in` included;
//! - a comparison between mismatched types (a string attribute against an integer,
//!   an integer attribute against a string) is **false**, `!=` included;
//! - `not` negates the boolean below it, so `not attributes.x = 'a'` is true for a
//!   client without `x`;
//! - a string-list attribute satisfies `=` and `in` when **any** element equals a
//!   value; `!=` (or `<>`) is true when **no** element equals it (an empty list
//!   included), i.e. "the list does not contain it";
//! - `<`, `>`, `<=`, `>=` compare integers: with a string value they are refused
//!   when the query is parsed.
//!
//! Input is bounded: a query longer than [`MAX_QUERY_LEN`] bytes, or nesting
//! parentheses and `not` deeper than [`MAX_QUERY_DEPTH`], is an error, so neither
//! parsing nor evaluation can overflow the stack.

use core::cmp::Ordering;
use core::fmt;

use crate::hooks::{AttributeValue, Attributes};

/// The longest query accepted, in bytes.
pub const MAX_QUERY_LEN: usize = 16 * 1024;

/// How deep parentheses and `not` may nest, together.
pub const MAX_QUERY_DEPTH: usize = 32;

/// A parsed client group query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    text: Box<str>,
    expr: Expr,
}

/// Why a query was refused: where (a byte offset into the query text) and what
/// was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// Byte offset into the query text.
    pub position: usize,
    /// What was wrong, for the operator.
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.position, self.message)
    }
}

impl std::error::Error for QueryError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    All,
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Compare {
        field: Field,
        op: Op,
        value: Literal,
    },
    In {
        field: Field,
        values: Vec<Literal>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Field {
    AuthenticationName,
    Attribute(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Literal {
    String(String),
    Integer(i64),
}

impl Query {
    /// Parses a query (see the module documentation for the grammar).
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        if text.len() > MAX_QUERY_LEN {
            return Err(QueryError {
                position: MAX_QUERY_LEN,
                message: format!(
                    "the query is {} bytes long; at most {MAX_QUERY_LEN} are allowed",
                    text.len()
                ),
            });
        }
        let expr = if text.trim().eq_ignore_ascii_case("$all") {
            Expr::All
        } else {
            let tokens = lex(text)?;
            let mut parser = Parser { tokens, next: 0 };
            if parser.peek().kind == Kind::End {
                return Err(QueryError {
                    position: parser.peek().position,
                    message: "the query is empty (write $all to match every client)".into(),
                });
            }
            let expr = parser.or(0)?;
            let token = parser.peek();
            if token.kind != Kind::End {
                return Err(parser.expected("'and', 'or' or the end of the query"));
            }
            expr
        };
        Ok(Query {
            text: text.into(),
            expr,
        })
    }

    /// The query that matches every client (`$all`).
    pub fn all() -> Query {
        Query {
            text: "$all".into(),
            expr: Expr::All,
        }
    }

    /// The text this query was parsed from.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Does a client with this authentication name and these attributes belong to
    /// the group? (`None` and an empty map are the same: every attribute missing.)
    pub fn matches(
        &self,
        authentication_name: Option<&str>,
        attributes: Option<&Attributes>,
    ) -> bool {
        eval(&self.expr, authentication_name, attributes)
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Recursion is bounded by [`MAX_QUERY_DEPTH`]: `and`/`or` chains are flat vectors
/// and only `(` and `not` nest.
fn eval(expr: &Expr, name: Option<&str>, attributes: Option<&Attributes>) -> bool {
    match expr {
        Expr::All => true,
        Expr::Or(items) => items.iter().any(|e| eval(e, name, attributes)),
        Expr::And(items) => items.iter().all(|e| eval(e, name, attributes)),
        Expr::Not(inner) => !eval(inner, name, attributes),
        Expr::Compare { field, op, value } => match lookup(field, name, attributes) {
            Some(actual) => compare(actual, *op, value),
            None => false,
        },
        Expr::In { field, values } => match lookup(field, name, attributes) {
            Some(actual) => values.iter().any(|v| compare(actual, Op::Eq, v)),
            None => false,
        },
    }
}

#[derive(Clone, Copy)]
enum Actual<'a> {
    String(&'a str),
    Integer(i64),
    List(&'a [String]),
}

fn lookup<'a>(
    field: &Field,
    name: Option<&'a str>,
    attributes: Option<&'a Attributes>,
) -> Option<Actual<'a>> {
    match field {
        Field::AuthenticationName => name.map(Actual::String),
        Field::Attribute(key) => attributes?.get(key).map(|v| match v {
            AttributeValue::String(s) => Actual::String(s),
            AttributeValue::Integer(i) => Actual::Integer(*i),
            AttributeValue::StringList(list) => Actual::List(list),
        }),
    }
}

fn compare(actual: Actual<'_>, op: Op, value: &Literal) -> bool {
    match (actual, value) {
        (Actual::String(a), Literal::String(v)) => op.holds(a.cmp(v.as_str())),
        (Actual::Integer(a), Literal::Integer(v)) => op.holds(a.cmp(v)),
        // "Does not contain": the negation of "any element equals".
        (Actual::List(items), Literal::String(v)) if op == Op::Ne => {
            !items.iter().any(|item| item == v)
        }
        (Actual::List(items), Literal::String(v)) => items
            .iter()
            .any(|item| op.holds(item.as_str().cmp(v.as_str()))),
        _ => false,
    }
}

impl Op {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Op::Eq => ordering == Ordering::Equal,
            Op::Ne => ordering != Ordering::Equal,
            Op::Lt => ordering == Ordering::Less,
            Op::Gt => ordering == Ordering::Greater,
            Op::Le => ordering != Ordering::Greater,
            Op::Ge => ordering != Ordering::Less,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Gt => ">",
            Op::Le => "<=",
            Op::Ge => ">=",
        }
    }
}

// ---------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind<'a> {
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Op(Op),
    String(String),
    Integer(i64),
    Word(&'a str),
    End,
}

#[derive(Debug, Clone)]
struct Token<'a> {
    kind: Kind<'a>,
    position: usize,
}

impl Kind<'_> {
    fn describe(&self) -> String {
        match self {
            Kind::LParen => "'('".into(),
            Kind::RParen => "')'".into(),
            Kind::LBracket => "'['".into(),
            Kind::RBracket => "']'".into(),
            Kind::Comma => "','".into(),
            Kind::Op(op) => format!("'{}'", op.text()),
            Kind::String(s) => format!("the string '{}'", s.replace('\'', "''")),
            Kind::Integer(i) => format!("the integer {i}"),
            Kind::Word(w) => format!("'{w}'"),
            Kind::End => "the end of the query".into(),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Kind::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

fn lex(text: &str) -> Result<Vec<Token<'_>>, QueryError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let start = i;
        let kind = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => Kind::LParen,
            b')' => Kind::RParen,
            b'[' => Kind::LBracket,
            b']' => Kind::RBracket,
            b',' => Kind::Comma,
            b'=' | b'!' | b'<' | b'>' => {
                let len = bytes[start..]
                    .iter()
                    .take_while(|c| matches!(c, b'=' | b'!' | b'<' | b'>'))
                    .count();
                let run = &text[start..start + len];
                let op = match run {
                    "=" => Op::Eq,
                    "!=" | "<>" => Op::Ne,
                    "<" => Op::Lt,
                    ">" => Op::Gt,
                    "<=" => Op::Le,
                    ">=" => Op::Ge,
                    _ => {
                        return Err(QueryError {
                            position: start,
                            message: format!(
                                "unknown operator '{run}': expected =, !=, <>, <, >, <= or >="
                            ),
                        })
                    }
                };
                i += len;
                tokens.push(Token {
                    kind: Kind::Op(op),
                    position: start,
                });
                continue;
            }
            b'\'' => {
                let mut value = String::new();
                let mut j = start + 1;
                loop {
                    // Quotes are ASCII, so every slice boundary below is a char boundary.
                    let Some(offset) = bytes[j..].iter().position(|&c| c == b'\'') else {
                        return Err(QueryError {
                            position: start,
                            message: "unterminated string: no closing quote (a quote inside \
                                      a string is written '')"
                                .into(),
                        });
                    };
                    value.push_str(&text[j..j + offset]);
                    j += offset + 1;
                    if bytes.get(j) == Some(&b'\'') {
                        value.push('\'');
                        j += 1;
                    } else {
                        break;
                    }
                }
                i = j;
                tokens.push(Token {
                    kind: Kind::String(value),
                    position: start,
                });
                continue;
            }
            b'-' | b'0'..=b'9' => {
                let digits_from = if b == b'-' { start + 1 } else { start };
                let digits = bytes[digits_from..]
                    .iter()
                    .take_while(|c| c.is_ascii_digit())
                    .count();
                if digits == 0 {
                    return Err(QueryError {
                        position: start,
                        message: "expected digits after '-'".into(),
                    });
                }
                let end = digits_from + digits;
                let literal = &text[start..end];
                let value = literal.parse::<i64>().map_err(|_| QueryError {
                    position: start,
                    message: format!(
                        "the integer {literal} is out of range ({} to {})",
                        i64::MIN,
                        i64::MAX
                    ),
                })?;
                i = end;
                tokens.push(Token {
                    kind: Kind::Integer(value),
                    position: start,
                });
                continue;
            }
            b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'$' => {
                let len = bytes[start..]
                    .iter()
                    .take_while(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'$')
                    })
                    .count();
                i += len;
                tokens.push(Token {
                    kind: Kind::Word(&text[start..start + len]),
                    position: start,
                });
                continue;
            }
            _ => {
                let c = text[start..].chars().next().unwrap_or('\u{fffd}');
                let hint = match c {
                    '"' => ": strings are single-quoted ('sensor')",
                    '&' => ": write 'and'",
                    '|' => ": write 'or'",
                    _ => "",
                };
                return Err(QueryError {
                    position: start,
                    message: format!("unexpected character '{c}'{hint}"),
                });
            }
        };
        i += 1;
        tokens.push(Token {
            kind,
            position: start,
        });
    }
    tokens.push(Token {
        kind: Kind::End,
        position: text.len(),
    });
    Ok(tokens)
}

// ---------------------------------------------------------------------------
// Parser: recursive descent, depth-bounded.

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    next: usize,
}

const END: Token<'static> = Token {
    kind: Kind::End,
    position: 0,
};

impl<'a> Parser<'a> {
    fn peek(&self) -> &Token<'a> {
        // The lexer always ends the list with `End`, and `advance` never passes it.
        self.tokens
            .get(self.next)
            .or_else(|| self.tokens.last())
            .unwrap_or(&END)
    }

    fn advance(&mut self) -> Token<'a> {
        let token = self.peek().clone();
        if self.next + 1 < self.tokens.len() {
            self.next += 1;
        }
        token
    }

    fn expected(&self, what: &str) -> QueryError {
        let token = self.peek();
        QueryError {
            position: token.position,
            message: format!("expected {what}, found {}", token.kind.describe()),
        }
    }

    fn deeper(&self, depth: usize) -> Result<usize, QueryError> {
        if depth >= MAX_QUERY_DEPTH {
            return Err(QueryError {
                position: self.peek().position,
                message: format!("parentheses and 'not' nest more than {MAX_QUERY_DEPTH} deep"),
            });
        }
        Ok(depth + 1)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, QueryError> {
        let mut items = vec![self.and(depth)?];
        while self.peek().kind.is_keyword("or") {
            self.advance();
            items.push(self.and(depth)?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self, depth: usize) -> Result<Expr, QueryError> {
        let mut items = vec![self.not(depth)?];
        while self.peek().kind.is_keyword("and") {
            self.advance();
            items.push(self.not(depth)?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::And(items)
        })
    }

    fn not(&mut self, depth: usize) -> Result<Expr, QueryError> {
        if self.peek().kind.is_keyword("not") {
            let depth = self.deeper(depth)?;
            self.advance();
            return Ok(Expr::Not(Box::new(self.not(depth)?)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, QueryError> {
        if self.peek().kind == Kind::LParen {
            let depth = self.deeper(depth)?;
            let open = self.advance().position;
            let expr = self.or(depth)?;
            if self.peek().kind != Kind::RParen {
                return Err(
                    self.expected(&format!("'and', 'or' or ')' to close the '(' at {open}"))
                );
            }
            self.advance();
            return Ok(expr);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let field = self.field()?;
        let token = self.peek().clone();
        match token.kind {
            Kind::Op(op) => {
                self.advance();
                let (value, position) = self.value()?;
                if let (Literal::String(_), Op::Lt | Op::Gt | Op::Le | Op::Ge) = (&value, op) {
                    return Err(QueryError {
                        position,
                        message: format!(
                            "'{}' compares integers, found a string (strings support = and != only)",
                            op.text()
                        ),
                    });
                }
                Ok(Expr::Compare { field, op, value })
            }
            Kind::Word(w) if w.eq_ignore_ascii_case("in") => {
                self.advance();
                if self.peek().kind != Kind::LBracket {
                    return Err(self.expected("'[' after 'in' (e.g. in ['a', 'b'])"));
                }
                self.advance();
                let mut values = vec![self.value()?.0];
                loop {
                    match self.peek().kind {
                        Kind::Comma => {
                            self.advance();
                            values.push(self.value()?.0);
                        }
                        Kind::RBracket => {
                            self.advance();
                            break;
                        }
                        _ => return Err(self.expected("',' or ']' in the list")),
                    }
                }
                Ok(Expr::In { field, values })
            }
            Kind::Word(w) if w.eq_ignore_ascii_case("not") => Err(QueryError {
                position: token.position,
                message: "expected an operator (=, !=, <>, <, >, <=, >=, in), found 'not' \
                          (write: not attributes.x in [...])"
                    .into(),
            }),
            _ => Err(self.expected("an operator (=, !=, <>, <, >, <=, >=, in)")),
        }
    }

    fn field(&mut self) -> Result<Field, QueryError> {
        const EXPECTED: &str =
            "a comparison (authenticationName or attributes.<key>), 'not' or '('";
        let token = self.peek().clone();
        let Kind::Word(word) = token.kind else {
            return Err(self.expected(EXPECTED));
        };
        if ["and", "or", "not", "in"]
            .iter()
            .any(|k| word.eq_ignore_ascii_case(k))
        {
            return Err(self.expected(EXPECTED));
        }
        if word.eq_ignore_ascii_case("$all") {
            return Err(QueryError {
                position: token.position,
                message: "$all must be the whole query".into(),
            });
        }
        let field = if word.eq_ignore_ascii_case("authenticationName") {
            Field::AuthenticationName
        } else if word.len() > 11 && word[..11].eq_ignore_ascii_case("attributes.") {
            let key = &word[11..];
            if !is_attribute_key(key) {
                return Err(QueryError {
                    position: token.position + 11,
                    message: format!(
                        "invalid attribute key '{key}': keys are letters, digits, '_' and '-'"
                    ),
                });
            }
            Field::Attribute(key.to_owned())
        } else {
            return Err(QueryError {
                position: token.position,
                message: format!(
                    "unknown field '{word}': expected authenticationName or attributes.<key>"
                ),
            });
        };
        self.advance();
        Ok(field)
    }

    fn value(&mut self) -> Result<(Literal, usize), QueryError> {
        let token = self.peek().clone();
        let literal = match token.kind {
            Kind::String(s) => Literal::String(s),
            Kind::Integer(i) => Literal::Integer(i),
            _ => return Err(self.expected("a value (a 'string' or an integer)")),
        };
        self.advance();
        Ok((literal, token.position))
    }
}

/// An attribute key as queries and templates name it: ASCII letters, digits, `_`
/// and `-`, at least one.
pub(crate) fn is_attribute_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(items: &[(&str, AttributeValue)]) -> Attributes {
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::String(v.into())
    }

    fn i(v: i64) -> AttributeValue {
        AttributeValue::Integer(v)
    }

    fn list(v: &[&str]) -> AttributeValue {
        AttributeValue::StringList(v.iter().map(|x| (*x).to_owned()).collect())
    }

    fn sensor() -> Attributes {
        attrs(&[
            ("type", s("sensor")),
            ("floor", i(2)),
            ("zones", list(&["north", "east"])),
            ("owner", s("O'Brien")),
            ("offset", i(-5)),
            ("empty", list(&[])),
        ])
    }

    #[track_caller]
    fn check(query: &str, expected: bool) {
        let q = Query::parse(query).unwrap_or_else(|e| panic!("{query:?}: {e}"));
        assert_eq!(
            q.matches(Some("dev-1"), Some(&sensor())),
            expected,
            "{query}"
        );
    }

    #[track_caller]
    fn error(query: &str) -> String {
        match Query::parse(query) {
            Ok(q) => panic!("{query:?} parsed as {q:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn issue_example_query() {
        check(
            "attributes.type = 'sensor' and attributes.floor in [1, 2, 3]",
            true,
        );
        check(
            "attributes.type = 'sensor' and attributes.floor in [4, 5]",
            false,
        );
    }

    #[test]
    fn every_comparison_operator() {
        check("attributes.floor = 2", true);
        check("attributes.floor = 3", false);
        check("attributes.floor != 3", true);
        check("attributes.floor != 2", false);
        check("attributes.floor <> 3", true);
        check("attributes.floor <> 2", false);
        check("attributes.floor < 3", true);
        check("attributes.floor < 2", false);
        check("attributes.floor > 1", true);
        check("attributes.floor > 2", false);
        check("attributes.floor <= 2", true);
        check("attributes.floor <= 1", false);
        check("attributes.floor >= 2", true);
        check("attributes.floor >= 3", false);
        check("attributes.type = 'sensor'", true);
        check("attributes.type != 'camera'", true);
        check("attributes.type <> 'sensor'", false);
        check("authenticationName = 'dev-1'", true);
        check("authenticationName != 'dev-1'", false);
        check("attributes.floor=2", true);
        check("attributes.floor>=-1", true);
    }

    #[test]
    fn logical_operators_and_precedence() {
        check("attributes.floor = 2 and attributes.type = 'sensor'", true);
        check("attributes.floor = 2 and attributes.type = 'camera'", false);
        check("attributes.floor = 9 or attributes.type = 'sensor'", true);
        check("attributes.floor = 9 or attributes.type = 'camera'", false);
        check("not attributes.floor = 9", true);
        check("not not attributes.floor = 2", true);
        // and binds tighter than or: true or (false and false)
        check(
            "attributes.floor = 2 or attributes.floor = 9 and attributes.type = 'camera'",
            true,
        );
        // parentheses override: (true or false) and false
        check(
            "(attributes.floor = 2 or attributes.floor = 9) and attributes.type = 'camera'",
            false,
        );
        // not binds tighter than and: (not false) and true
        check(
            "not attributes.floor = 9 and attributes.type = 'sensor'",
            true,
        );
        // not binds tighter than or: (not true) or true
        check(
            "not attributes.floor = 2 or attributes.type = 'sensor'",
            true,
        );
        check(
            "not (attributes.floor = 2 or attributes.type = 'sensor')",
            false,
        );
        check("((attributes.floor = 2))", true);
    }

    #[test]
    fn keywords_and_fields_are_case_insensitive() {
        check("attributes.floor = 2 AND attributes.type = 'sensor'", true);
        check("attributes.floor = 9 Or attributes.type = 'sensor'", true);
        check("NOT attributes.floor = 9", true);
        check("attributes.floor IN [2]", true);
        check("Attributes.floor iN [2]", true);
        check("AUTHENTICATIONNAME = 'dev-1'", true);
        check("$ALL", true);
        // Keys are exact: "Floor" is not "floor", so it is missing.
        check("attributes.Floor = 2", false);
    }

    #[test]
    fn quoted_strings_escape_a_quote_by_doubling_it() {
        check("attributes.owner = 'O''Brien'", true);
        check("attributes.owner = 'OBrien'", false);
        let q = Query::parse("authenticationName = ''''").expect("the test\'s query parses");
        assert!(q.matches(Some("'"), None));
        let q = Query::parse("authenticationName = ''").expect("the test\'s query parses");
        assert!(q.matches(Some(""), None));
        let q =
            Query::parse("authenticationName = 'é and ( or ]'").expect("the test\'s query parses");
        assert!(q.matches(Some("é and ( or ]"), None));
    }

    #[test]
    fn negative_integers() {
        check("attributes.offset = -5", true);
        check("attributes.offset < -4", true);
        check("attributes.offset in [-1, -5]", true);
        check("attributes.offset > -5", false);
        let min =
            Query::parse("attributes.x = -9223372036854775808").expect("the test\'s query parses");
        assert!(min.matches(None, Some(&attrs(&[("x", i(i64::MIN))]))));
    }

    #[test]
    fn in_lists_of_strings_and_integers() {
        check("attributes.type in ['camera', 'sensor']", true);
        check("attributes.type in ['camera']", false);
        check("attributes.floor in [1, 2, 3]", true);
        check("attributes.floor in [1,3]", false);
        // Mixed lists compare each value with its own type.
        check("attributes.floor in ['2', 2]", true);
        check("attributes.floor in ['2']", false);
        check("authenticationName in ['dev-0', 'dev-1']", true);
    }

    #[test]
    fn string_list_attributes_match_any_element() {
        check("attributes.zones = 'east'", true);
        check("attributes.zones = 'south'", false);
        check("attributes.zones in ['south', 'north']", true);
        check("attributes.zones in ['south']", false);
        // != means "does not contain".
        check("attributes.zones != 'south'", true);
        check("attributes.zones != 'east'", false);
        check("attributes.empty = 'east'", false);
        check("attributes.empty != 'east'", true);
        check("attributes.zones = 1", false);
    }

    #[test]
    fn missing_attributes_make_every_comparison_false_and_not_negates() {
        for op in ["=", "!=", "<>", "<", ">", "<=", ">="] {
            check(&format!("attributes.missing {op} 1"), false);
            check(&format!("not attributes.missing {op} 1"), true);
        }
        check("attributes.missing = 'x'", false);
        check("attributes.missing != 'x'", false);
        check("attributes.missing in ['x', 1]", false);
        check("not attributes.missing in ['x', 1]", true);
        let q = Query::parse("authenticationName != 'x'").expect("the test\'s query parses");
        assert!(!q.matches(None, None));
        let q = Query::parse("not authenticationName = 'x'").expect("the test\'s query parses");
        assert!(q.matches(None, None));
        let q = Query::parse("attributes.type = 'sensor'").expect("the test\'s query parses");
        assert!(!q.matches(Some("dev-1"), None));
        assert!(!q.matches(Some("dev-1"), Some(&Attributes::new())));
    }

    #[test]
    fn mismatched_types_are_false_even_for_not_equal() {
        check("attributes.floor = '2'", false);
        check("attributes.floor != '2'", false);
        check("attributes.type = 1", false);
        check("attributes.type != 1", false);
        check("attributes.type < 1", false);
        check("not attributes.type = 1", true);
    }

    #[test]
    fn all_matches_everyone() {
        let q = Query::parse("$all").expect("the test\'s query parses");
        assert!(q.matches(None, None));
        assert!(q.matches(Some("x"), Some(&sensor())));
        assert!(Query::parse("  $all\n")
            .expect("the test\'s query parses")
            .matches(None, None));
        assert!(Query::all().matches(None, None));
        assert_eq!(
            error("$all or attributes.x = 1"),
            "at 0: $all must be the whole query"
        );
    }

    #[test]
    fn query_keeps_its_text() {
        let q = Query::parse("attributes.floor = 2").expect("the test\'s query parses");
        assert_eq!(q.text(), "attributes.floor = 2");
        assert_eq!(q.to_string(), "attributes.floor = 2");
    }

    #[test]
    fn malformed_queries_say_where_and_what_was_expected() {
        let cases: &[(&str, &str)] = &[
            ("", "at 0: the query is empty (write $all to match every client)"),
            ("   ", "at 3: the query is empty (write $all to match every client)"),
            (
                "attributes.type = 'sensor",
                "at 18: unterminated string: no closing quote (a quote inside a string is written '')",
            ),
            (
                "attributes.floor in [1, 2, ]",
                "at 27: expected a value (a 'string' or an integer), found ']'",
            ),
            (
                "attributes.floor =",
                "at 18: expected a value (a 'string' or an integer), found the end of the query",
            ),
            (
                "attributes.floor = 1 and",
                "at 24: expected a comparison (authenticationName or attributes.<key>), 'not' or '(', found the end of the query",
            ),
            (
                "and attributes.floor = 1",
                "at 0: expected a comparison (authenticationName or attributes.<key>), 'not' or '(', found 'and'",
            ),
            (
                "attributes.floor == 1",
                "at 17: unknown operator '==': expected =, !=, <>, <, >, <= or >=",
            ),
            (
                "attributes.floor like 1",
                "at 17: expected an operator (=, !=, <>, <, >, <=, >=, in), found 'like'",
            ),
            (
                "attributes.floor = 1 attributes.type = 'a'",
                "at 21: expected 'and', 'or' or the end of the query, found 'attributes.type'",
            ),
            (
                "attributes.floor = 1)",
                "at 20: expected 'and', 'or' or the end of the query, found ')'",
            ),
            (
                "attributes.floor in 1, 2",
                "at 20: expected '[' after 'in' (e.g. in ['a', 'b']), found the integer 1",
            ),
            (
                "attributes.floor in [1 2]",
                "at 23: expected ',' or ']' in the list, found the integer 2",
            ),
            (
                "(attributes.floor = 1",
                "at 21: expected 'and', 'or' or ')' to close the '(' at 0, found the end of the query",
            ),
            (
                "attributes.type = \"sensor\"",
                "at 18: unexpected character '\"': strings are single-quoted ('sensor')",
            ),
            (
                "attributes.a = 1 && attributes.b = 2",
                "at 17: unexpected character '&': write 'and'",
            ),
            (
                "attributes.type < 'b'",
                "at 18: '<' compares integers, found a string (strings support = and != only)",
            ),
            (
                "attributes.a.b = 1",
                "at 11: invalid attribute key 'a.b': keys are letters, digits, '_' and '-'",
            ),
            (
                "attributes. = 1",
                "at 0: unknown field 'attributes.': expected authenticationName or attributes.<key>",
            ),
            (
                "clientId = 'x'",
                "at 0: unknown field 'clientId': expected authenticationName or attributes.<key>",
            ),
            ("attributes.a = - 1", "at 15: expected digits after '-'"),
            (
                "attributes.a = 9223372036854775808",
                "at 15: the integer 9223372036854775808 is out of range (-9223372036854775808 to 9223372036854775807)",
            ),
            (
                "attributes.a not in [1]",
                "at 13: expected an operator (=, !=, <>, <, >, <=, >=, in), found 'not' (write: not attributes.x in [...])",
            ),
            (
                "attributes.a in []",
                "at 17: expected a value (a 'string' or an integer), found ']'",
            ),
            (
                "not",
                "at 3: expected a comparison (authenticationName or attributes.<key>), 'not' or '(', found the end of the query",
            ),
            (
                "()",
                "at 1: expected a comparison (authenticationName or attributes.<key>), 'not' or '(', found ')'",
            ),
            (
                "attributes.a = 'é' é",
                "at 20: unexpected character 'é'",
            ),
        ];
        for (query, expected) in cases {
            assert_eq!(&error(query), expected, "query: {query}");
        }
    }

    #[test]
    fn nesting_is_bounded_without_overflowing_the_stack() {
        let deep = "(".repeat(100_000);
        assert_eq!(
            error(&deep),
            "at 16384: the query is 100000 bytes long; at most 16384 are allowed"
        );
        let deep = "(".repeat(10_000);
        assert_eq!(
            error(&deep),
            "at 32: parentheses and 'not' nest more than 32 deep"
        );
        let nots = "not ".repeat(4_000);
        assert_eq!(
            error(&nots),
            "at 128: parentheses and 'not' nest more than 32 deep"
        );
        let ok = format!(
            "{}attributes.floor = 2{}",
            "(".repeat(MAX_QUERY_DEPTH),
            ")".repeat(MAX_QUERY_DEPTH)
        );
        check(&ok, true);
        let ok = format!("{}attributes.floor = 2", "not ".repeat(MAX_QUERY_DEPTH));
        check(&ok, true);
        // Long flat chains do not nest.
        let chain = vec!["attributes.floor = 2"; 500].join(" and ");
        check(&chain, true);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "[ a-zA-Z0-9_.$'\"()\\[\\],=!<>&|-]{0,64}") {
            if let Ok(q) = Query::parse(&text) {
                let _ = q.matches(Some("a"), Some(&sensor()));
            }
        }

        #[test]
        fn parse_never_panics_on_any_string(text in "\\PC{0,40}") {
            let _ = Query::parse(&text);
        }
    }
}
