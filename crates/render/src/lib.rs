//! ferry's renderer: confd's template resources, its template functions and its
//! staged-write pipeline, over etcd keys read at one store revision.
//!
//! The template language is Go's `text/template`, provided by the `gotmpl` crate (see
//! ARCHITECTURE.md for why); [`functions`] adds confd's function set over a [`KvSnapshot`].

#![warn(missing_docs)]

mod command;
pub mod dns;
mod file_worker;
pub mod functions;
mod gofmt;
mod gopath;
pub mod goprint;
mod gosort;
mod gotime;
mod json_memo;
mod last_install;
pub mod pipeline;
pub mod resource;
mod rewrite;
mod slice_type;
pub mod snapshot;
pub mod status;
pub mod watch;

pub use functions::{template_for, ConfdTemplate, PreparedTemplate};
pub use last_install::LastInstall;
pub use pipeline::{
    install, render_resource, render_text, Outcome, RenderError, RenderOptions, TemplateCache,
};
pub use resource::{load_confdir, TemplateResource};
pub use snapshot::KvSnapshot;
