//! Rewrites of a parsed template so that gotmpl runs it as Go's text/template runs confd's:
//!
//! - Every printing action ends in [`PRINT_FUNC`], so its value is printed as Go's `fmt`
//!   prints it (see `goprint.rs`) rather than by gotmpl's Rust formatting.
//! - confd's `reverse`, `sortByLength` and `sortKVByLength` reorder the slice they are given
//!   in place, so in Go the variable passed to them shows the new order afterwards. gotmpl's
//!   lists are immutable; `F $v` becomes an assignment `{{$v = F $v}}` placed just before the
//!   node, and the call itself reads `$v`. (Another variable that aliases the same slice is
//!   not followed; neither is `$v | F`.)
//! - A number constant such as `2.0` or `1e2` passed to one of confd's `int` parameters is
//!   an integer in Go (its value is integral); gotmpl parses it as a float, which those
//!   functions refuse (as Go refuses a `float64` value), so such constants become integers.

use gotmpl::parse::{ActionNode, CommandNode, Expr, ListNode, Node, Number, PipeNode, SmolStr};

/// Appended to a template's text before parsing, so that the parse tree shows whether the
/// parser read the whole text (it has no `{{` and no meaning to a template).
pub const SENTINEL: &str = "\u{0}ferry:end-of-template\u{0}";

/// The main tree without the [`SENTINEL`] text at its end; `None` if the sentinel is not
/// there (the parser stopped early).
pub fn strip_sentinel(tree: &ListNode) -> Option<ListNode> {
    let mut tree = tree.clone();
    let Some(Node::Text(last)) = tree.nodes.last_mut() else {
        return None;
    };
    let kept = last.text.strip_suffix(SENTINEL)?.to_string();
    if kept.is_empty() {
        tree.nodes.pop();
    } else {
        last.text = kept.into();
    }
    Some(tree)
}

/// The function every `range` pipeline's value is piped into (it refuses what Go cannot
/// range over).
pub const RANGE_FUNC: &str = "_ferryRange";

/// The function every printing action's value is piped into.
pub const PRINT_FUNC: &str = "_ferryPrint";

/// confd's functions whose parameters are Go `int`s.
const INT_PARAMS: [&str; 6] = ["add", "sub", "mul", "div", "mod", "seq"];

/// `sortByLength` applied to the variable it was given, keeping the variable's type.
pub const SORT_IN_PLACE: &str = "_ferrySortByLengthInPlace";
/// `sortKVByLength` applied to the variable it was given, keeping the variable's type.
pub const SORT_KV_IN_PLACE: &str = "_ferrySortKVByLengthInPlace";

/// confd's functions that reorder their argument in place, and what the hoisted
/// assignment calls. `reverse` is then read from the variable; a sort runs again on the
/// sorted variable (Go's sort leaves sorted input as it is) so the call keeps its own
/// result type.
const IN_PLACE: [(&str, &str); 3] = [
    ("reverse", "reverse"),
    ("sortByLength", SORT_IN_PLACE),
    ("sortKVByLength", SORT_KV_IN_PLACE),
];

/// `list` with both rewrites applied, recursively.
pub fn rewrite(list: &ListNode) -> ListNode {
    let mut nodes = Vec::with_capacity(list.nodes.len());
    for node in &list.nodes {
        match node {
            Node::Action(action) => {
                let mut action = action.clone();
                nodes.extend(hoist_in_place(&mut action.pipe));
                if action.pipe.decl.is_empty() {
                    let pos = action.pipe.pos;
                    action.pipe.commands.push(CommandNode {
                        pos,
                        args: vec![Expr::Identifier(pos, SmolStr::from(PRINT_FUNC))],
                    });
                }
                nodes.push(Node::Action(action));
            }
            Node::If(branch) | Node::Range(branch) | Node::With(branch) => {
                let mut branch = branch.clone();
                nodes.extend(hoist_in_place(&mut branch.pipe));
                if matches!(node, Node::Range(_)) {
                    let pos = branch.pipe.pos;
                    branch.pipe.commands.push(CommandNode {
                        pos,
                        args: vec![Expr::Identifier(pos, SmolStr::from(RANGE_FUNC))],
                    });
                }
                branch.body = rewrite(&branch.body);
                branch.else_body = branch.else_body.as_ref().map(rewrite);
                nodes.push(match node {
                    Node::If(_) => Node::If(branch),
                    Node::Range(_) => Node::Range(branch),
                    _ => Node::With(branch),
                });
            }
            Node::List(inner) => nodes.push(Node::List(rewrite(inner))),
            Node::Define(define) => {
                let mut define = define.clone();
                define.body = rewrite(&define.body);
                nodes.push(Node::Define(define));
            }
            other => nodes.push(other.clone()),
        }
    }
    ListNode {
        pos: list.pos,
        nodes,
    }
}

/// Turns each `F $v` in `pipe` (and in its parenthesised sub-pipelines) into `$v`, and
/// returns the assignments `{{$v = F $v}}` to run first.
fn hoist_in_place(pipe: &mut PipeNode) -> Vec<Node> {
    let mut hoisted = Vec::new();
    for command in &mut pipe.commands {
        hoist_command(command, &mut hoisted);
    }
    hoisted
}

fn hoist_command(command: &mut CommandNode, hoisted: &mut Vec<Node>) {
    let int_params = matches!(
        command.args.first(),
        Some(Expr::Identifier(_, f)) if INT_PARAMS.contains(&f.as_str())
    );
    for arg in &mut command.args {
        match arg {
            Expr::Pipe(_, inner) => hoisted.extend(hoist_in_place(inner)),
            Expr::Number(_, n @ Number::Float(_)) if int_params => {
                if let Number::Float(f) = *n {
                    if f.fract() == 0.0 && f.abs() < 9.2e18 {
                        *n = Number::Int(f as i64);
                    }
                }
            }
            _ => {}
        }
    }
    let (Some(Expr::Identifier(_, func)), Some(Expr::Variable(pos, var, fields)), 2) = (
        command.args.first(),
        command.args.get(1),
        command.args.len(),
    ) else {
        return;
    };
    let Some(&(_, hoisted_func)) = IN_PLACE.iter().find(|(f, _)| *f == func.as_str()) else {
        return;
    };
    if !fields.is_empty() || var == "$" {
        return;
    }
    let replace_call = func.as_str() == "reverse";
    let (pos, var, func) = (*pos, var.clone(), SmolStr::from(hoisted_func));
    hoisted.push(Node::Action(ActionNode {
        pos,
        pipe: PipeNode {
            pos,
            decl: vec![var.clone()],
            commands: vec![CommandNode {
                pos,
                args: vec![
                    Expr::Identifier(pos, func),
                    Expr::Variable(pos, var.clone(), Vec::new()),
                ],
            }],
            is_assign: true,
        },
    }));
    if replace_call {
        command.args = vec![Expr::Variable(pos, var, Vec::new())];
    }
}
