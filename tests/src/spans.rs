//! What a `tracing` subscriber sees, for the tests that read the spans of a run: one
//! subscriber for the whole test binary keeps every span as it closes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as it closed: its name, its fields (those filled later included), and its
/// parent's name and fields.
#[derive(Clone, Debug)]
pub struct Closed {
    /// The span's name.
    pub name: String,
    /// Its fields, by name, as text.
    pub fields: BTreeMap<String, String>,
    /// Its parent's name and fields.
    pub parent: Option<(String, BTreeMap<String, String>)>,
}

impl Closed {
    /// The field `name`; panics without it.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or_else(
            || panic!("span {} has no field {name}: {self:?}", self.name),
            String::as_str,
        )
    }

    /// The field `name` as a number; panics without it or if it is not one.
    pub fn number(&self, name: &str) -> u64 {
        self.field(name)
            .parse()
            .unwrap_or_else(|_| panic!("field {name} of {self:?} is not a number"))
    }
}

#[derive(Clone, Default)]
struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

/// A layer that keeps every closed span.
struct Capture(Arc<Mutex<Vec<Closed>>>);

impl<S> tracing_subscriber::Layer<S> for Capture
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id)
            && let Some(fields) = span.extensions_mut().get_mut::<Fields>()
        {
            values.record(fields);
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let fields = span
            .extensions()
            .get::<Fields>()
            .cloned()
            .unwrap_or_default();
        let parent = span.parent().map(|p| {
            let fields = p.extensions().get::<Fields>().cloned().unwrap_or_default();
            (p.name().to_string(), fields.0)
        });
        self.0.lock().expect("capture lock").push(Closed {
            name: span.name().to_string(),
            fields: fields.0,
            parent,
        });
    }
}

/// The spans closed so far in this test binary (one subscriber for the whole process: the
/// runner's tasks may run on any thread).
pub fn captured() -> &'static Arc<Mutex<Vec<Closed>>> {
    static SPANS: OnceLock<Arc<Mutex<Vec<Closed>>>> = OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(Arc::clone(&spans)));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        spans
    })
}

/// The spans named `name` closed so far in this test binary.
pub fn spans_named(name: &str) -> Vec<Closed> {
    captured()
        .lock()
        .expect("capture lock")
        .iter()
        .filter(|s| s.name == name)
        .cloned()
        .collect()
}
