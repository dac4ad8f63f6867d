//! Rewrites of a parsed template so that gotmpl runs it as Go's text/template runs confd's:
//!
//! - Every printing action ends in [`PRINT_FUNC`], so its value is printed as Go's `fmt`
//!   prints it (see `goprint.rs`) rather than by gotmpl's Rust formatting.
//! - confd's `reverse`, `sortByLength` and `sortKVByLength` reorder the slice they are given
//!   in place, so in Go the variable passed to them shows the new order afterwards. gotmpl's
//!   lists are immutable; `F $v` becomes an assignment `{{$v = F $v}}` placed just before the
//!   node, and the call itself reads `$v`. (Another variable that aliases the same slice is
//!   not followed; neither is `$v | F`.)

use gotmpl::parse::{ActionNode, CommandNode, Expr, ListNode, Node, PipeNode, SmolStr};

/// The function every printing action's value is piped into.
pub const PRINT_FUNC: &str = "_ferryPrint";

/// confd's functions that reorder their argument in place.
const IN_PLACE: [&str; 3] = ["reverse", "sortByLength", "sortKVByLength"];

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
    for arg in &mut command.args {
        if let Expr::Pipe(_, inner) = arg {
            hoisted.extend(hoist_in_place(inner));
        }
    }
    let (Some(Expr::Identifier(_, func)), Some(Expr::Variable(pos, var, fields)), 2) = (
        command.args.first(),
        command.args.get(1),
        command.args.len(),
    ) else {
        return;
    };
    if !IN_PLACE.contains(&func.as_str()) || !fields.is_empty() || var == "$" {
        return;
    }
    let (pos, var, func) = (*pos, var.clone(), func.clone());
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
    command.args = vec![Expr::Variable(pos, var, Vec::new())];
}
