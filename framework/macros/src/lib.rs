//! The `#[migration]` attribute of [datamig](https://docs.rs/datamig).
//!
//! Use it through its re-export, `#[datamig::migration(..)]`; the documentation lives there.
//! This crate only parses the attribute and the function, validates them at compile time,
//! computes the code checksum, and emits the registration.

use proc_macro::TokenStream;
use proc_macro2::{Delimiter, Span, TokenStream as TokenStream2, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use sha2::{Digest, Sha256};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, PathArguments, ReturnType, Type};

mod id;

/// Registers an async function as a datamig data migration.
///
/// See `datamig::migration` for the full documentation.
#[proc_macro_attribute]
pub fn migration(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(args as Args);
    let func = syn::parse_macro_input!(item as ItemFn);
    match expand(args, func) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The parsed `key = value` arguments of the attribute.
struct Args {
    id: Option<(String, Span)>,
    revision: u32,
    rerun_on_change: bool,
    lock_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    batch: Option<BatchArgs>,
    requires_schema: Option<i64>,
}

/// The arguments of `batch(..)`.
struct BatchArgs {
    span: Span,
    table: Option<String>,
    key: Option<String>,
    size: u32,
    pause_ms: Option<u64>,
    retries: u32,
    scope: Option<String>,
    target_ms: Option<u64>,
    min_size: Option<u32>,
    max_size: Option<u32>,
    scan_without_index: bool,
    workers: u32,
}

impl BatchArgs {
    fn parse(list: &syn::MetaList) -> syn::Result<Self> {
        let mut args = BatchArgs {
            span: list.span(),
            table: None,
            key: None,
            size: 10_000,
            pause_ms: None,
            retries: 5,
            scope: None,
            target_ms: None,
            min_size: None,
            max_size: None,
            scan_without_index: false,
            workers: 1,
        };
        list.parse_nested_meta(|meta| {
            let name = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            let value: Expr = meta.value()?.parse()?;
            match name.as_str() {
                "table" => args.table = Some(lit_str(&value)?),
                "key" => args.key = Some(lit_str(&value)?),
                "size" => {
                    args.size = lit_int(&value)?;
                    if args.size == 0 {
                        return Err(syn::Error::new(
                            value.span(),
                            "the batch size must be at least 1",
                        ));
                    }
                }
                "pause" => args.pause_ms = Some(duration_ms(&value)?),
                "retries" => args.retries = lit_int(&value)?,
                "scope" => {
                    let scope = lit_str(&value)?;
                    if scope.trim().is_empty() {
                        return Err(syn::Error::new(
                            value.span(),
                            "the scope is a condition on the table's rows, e.g. \"deleted_at IS NULL\"",
                        ));
                    }
                    args.scope = Some(scope);
                }
                "target" => args.target_ms = Some(duration_ms(&value)?),
                "min_size" => args.min_size = Some(lit_int(&value)?.max(1)),
                "max_size" => args.max_size = Some(lit_int(&value)?.max(1)),
                "dangerously_scan_without_index" => args.scan_without_index = lit_bool(&value)?,
                "workers" => {
                    args.workers = lit_int(&value)?;
                    if args.workers == 0 {
                        return Err(syn::Error::new(
                            value.span(),
                            "a batched migration needs at least one worker",
                        ));
                    }
                }
                _ => {
                    return Err(meta.error(
                        "unknown argument to batch(..): expected `table = \"..\"`, `key = \"..\"`, \
                         `size = N`, `scope = \"..\"`, `target = \"200ms\"`, `min_size = N`, \
                         `max_size = N`, `pause = \"50ms\"`, `retries = N`, `workers = N` or \
                         `dangerously_scan_without_index = true`",
                    ));
                }
            }
            Ok(())
        })?;
        if (args.min_size.is_some() || args.max_size.is_some()) && args.target_ms.is_none() {
            return Err(syn::Error::new(
                args.span,
                "min_size and max_size bound a size that adapts to a target duration: add \
                 target = \"200ms\" (or leave them out for a fixed size)",
            ));
        }
        if let (Some(min), Some(max)) = (args.min_size, args.max_size)
            && min > max
        {
            return Err(syn::Error::new(
                args.span,
                format!("min_size ({min}) is larger than max_size ({max})"),
            ));
        }
        if args.table.is_none() || args.key.is_none() {
            return Err(syn::Error::new(
                args.span,
                "batch(..) needs the table and its key: batch(table = \"users\", key = \"id\", size = 10000)",
            ));
        }
        Ok(args)
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args {
            id: None,
            revision: 0,
            rerun_on_change: false,
            lock_timeout_ms: None,
            statement_timeout_ms: None,
            batch: None,
            requires_schema: None,
        };
        let metas = input.parse_terminated(syn::Meta::parse, syn::Token![,])?;
        for meta in metas {
            let name = meta
                .path()
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            match (name.as_str(), &meta) {
                ("rerun_on_change", syn::Meta::Path(_)) => args.rerun_on_change = true,
                ("batch", syn::Meta::List(list)) => args.batch = Some(BatchArgs::parse(list)?),
                (_, syn::Meta::NameValue(nv)) => {
                    let value = &nv.value;
                    match name.as_str() {
                        "id" => args.id = Some((lit_str(value)?, value.span())),
                        "revision" => args.revision = lit_int(value)?,
                        "rerun_on_change" => args.rerun_on_change = lit_bool(value)?,
                        "requires_schema" => args.requires_schema = Some(lit_i64(value)?),
                        "lock_timeout" => args.lock_timeout_ms = Some(duration_ms(value)?),
                        "statement_timeout" => {
                            args.statement_timeout_ms = Some(duration_ms(value)?)
                        }
                        _ => return Err(unknown_arg(&meta)),
                    }
                }
                _ => return Err(unknown_arg(&meta)),
            }
        }
        Ok(args)
    }
}

fn unknown_arg(meta: &syn::Meta) -> syn::Error {
    syn::Error::new(
        meta.span(),
        "unknown argument to #[migration]: expected `id = \"..\"`, `revision = N`, \
         `rerun_on_change`, `lock_timeout = \"5s\"`, `statement_timeout = \"1min\"`, \
         `requires_schema = VERSION` or `batch(..)`",
    )
}

fn lit_str(expr: &Expr) -> syn::Result<String> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.value()),
        _ => Err(syn::Error::new(expr.span(), "expected a string literal")),
    }
}

fn lit_int(expr: &Expr) -> syn::Result<u32> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        _ => Err(syn::Error::new(expr.span(), "expected an integer literal")),
    }
}

fn lit_i64(expr: &Expr) -> syn::Result<i64> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse(),
        _ => Err(syn::Error::new(
            expr.span(),
            "expected an integer literal: the sqlx schema migration version",
        )),
    }
}

fn lit_bool(expr: &Expr) -> syn::Result<bool> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        _ => Err(syn::Error::new(expr.span(), "expected `true` or `false`")),
    }
}

/// Parses a duration such as `"500ms"`, `"5s"` or `"2min"` into milliseconds.
fn duration_ms(expr: &Expr) -> syn::Result<u64> {
    let text = lit_str(expr)?;
    match humantime::parse_duration(&text) {
        Ok(d) if !d.is_zero() => Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        _ => Err(syn::Error::new(
            expr.span(),
            format!(
                "invalid duration {text:?}: expected e.g. \"500ms\", \"5s\", \"2min\" or \"1h\""
            ),
        )),
    }
}

/// Which backends a migration's `Ctx` type names.
enum BackendKind {
    /// `Ctx<'_, Postgres>`: PostgreSQL only.
    Postgres,
    /// `Ctx<'_, Sqlite>`: SQLite only.
    Sqlite,
    /// `Ctx<'_, MySql>`: MySQL and MariaDB only.
    MySql,
    /// `fn m<DB: Backend>(ctx: &mut Ctx<'_, DB>)`: every backend compiled in.
    Portable,
}

fn expand(args: Args, func: ItemFn) -> syn::Result<TokenStream2> {
    let Some((id, id_span)) = args.id else {
        return Err(syn::Error::new(
            Span::call_site(),
            "#[migration] needs an id: #[migration(id = \"20241114_0930_backfill_notification_settings\")]",
        ));
    };
    if let Err(why) = id::validate(&id) {
        return Err(syn::Error::new(
            id_span,
            format!("invalid migration id {id:?}: {why}"),
        ));
    }
    let backend = check_signature(&func, args.batch.as_ref())?;

    let name = &func.sig.ident;
    let description = doc_text(&func.attrs);
    let checksum = checksum(&func);
    let revision = args.revision;
    let rerun = args.rerun_on_change;
    let opt_ms = |ms: Option<u64>| match ms {
        Some(ms) => quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms))),
        None => quote!(::core::option::Option::None),
    };
    let lock_timeout = opt_ms(args.lock_timeout_ms);
    let statement_timeout = opt_ms(args.statement_timeout_ms);
    let requires_schema = match args.requires_schema {
        Some(v) => quote!(::core::option::Option::Some(#v)),
        None => quote!(::core::option::Option::None),
    };
    let vis = &func.vis;
    let run_fn = format_ident!("__datamig_run");
    let ret_span = func.sig.output.span();

    let db = match backend {
        BackendKind::Postgres => quote!(::datamig::Postgres),
        BackendKind::Sqlite => quote!(::datamig::Sqlite),
        BackendKind::MySql => quote!(::datamig::MySql),
        BackendKind::Portable => quote!(DB),
    };
    let (run_params, run_args, register) = match &args.batch {
        None => (
            quote!(ctx: &'a mut ::datamig::Ctx<'c, #db>),
            quote!(ctx),
            match backend {
                BackendKind::Postgres => quote!(.postgres(#run_fn)),
                BackendKind::Sqlite => quote!(.sqlite(#run_fn)),
                BackendKind::MySql => quote!(.mysql(#run_fn)),
                BackendKind::Portable => quote!(.portable::<__DatamigBody>()),
            },
        ),
        Some(batch) => {
            let table = batch.table.as_deref().unwrap_or_default();
            let key = batch.key.as_deref().unwrap_or_default();
            let size = batch.size;
            let retries = batch.retries;
            let pause = opt_ms(batch.pause_ms);
            let scope = match &batch.scope {
                Some(scope) => quote!(::core::option::Option::Some(#scope)),
                None => quote!(::core::option::Option::None),
            };
            let target = opt_ms(batch.target_ms);
            let min_size = batch.min_size.unwrap_or(1);
            let max_size = batch.max_size.unwrap_or(u32::MAX);
            let scan_without_index = batch.scan_without_index;
            let workers = batch.workers;
            let spec = quote! {
                ::datamig::BatchSpec::__new(#table, #key, #size)
                    .__pause(#pause)
                    .__retries(#retries)
                    .__scope(#scope)
                    .__target(#target, #min_size, #max_size)
                    .__scan_without_index(#scan_without_index)
                    .__workers(#workers)
            };
            (
                quote!(ctx: &'a mut ::datamig::Ctx<'c, #db>, batch: ::datamig::Batch),
                quote!(ctx, batch),
                match backend {
                    BackendKind::Postgres => quote!(.postgres_batched(#run_fn, #spec)),
                    BackendKind::Sqlite => quote!(.sqlite_batched(#run_fn, #spec)),
                    BackendKind::MySql => quote!(.mysql_batched(#run_fn, #spec)),
                    BackendKind::Portable => {
                        quote!(.portable_batched::<__DatamigBody>(#spec))
                    }
                },
            )
        }
    };
    let module_doc = format!("The registration of the data migration `{id}` (see [`{name}`]).");
    let runner = if let BackendKind::Portable = backend {
        let call = quote_spanned! {ret_span=>
            ::std::boxed::Box::pin(super::#name::<DB>(#run_args))
        };
        let (portable, batch_param) = match &args.batch {
            None => (quote!(Portable), quote!()),
            Some(_) => (quote!(PortableBatched), quote!(, batch: ::datamig::Batch)),
        };
        quote! {
            /// The body, for each backend.
            pub struct __DatamigBody;

            impl ::datamig::__private::#portable for __DatamigBody {
                fn run<'a, 'c, DB: ::datamig::Backend>(
                    ctx: &'a mut ::datamig::Ctx<'c, DB> #batch_param
                ) -> ::datamig::__private::BoxFuture<'a, ::datamig::__private::anyhow::Result<()>> {
                    #call
                }
            }
        }
    } else {
        let call = quote_spanned! {ret_span=>
            ::std::boxed::Box::pin(super::#name(#run_args))
        };
        quote! {
            fn #run_fn<'a, 'c>(
                #run_params
            ) -> ::datamig::__private::BoxFuture<'a, ::datamig::__private::anyhow::Result<()>> {
                #call
            }
        }
    };

    Ok(quote! {
        #func

        #[doc = #module_doc]
        #[allow(non_snake_case, clippy::all)]
        #vis mod #name {
            #runner

            /// The descriptor of this migration, as registered with datamig.
            pub static MIGRATION: ::datamig::Migration = ::datamig::Migration::__new(
                #id,
                #description,
                #checksum,
                ::core::file!(),
                ::core::line!(),
            )
            .__revision(#revision)
            .__rerun_on_change(#rerun)
            .__lock_timeout(#lock_timeout)
            .__statement_timeout(#statement_timeout)
            .__requires_schema(#requires_schema)
            #register;

            ::datamig::__private::inventory::submit! {
                ::datamig::__private::Registered(&MIGRATION)
            }
        }
    })
}

/// Checks `async fn name(ctx: &mut Ctx<'_, Backend>) -> anyhow::Result<()>` (with a second
/// argument `batch: Batch` for a batched migration) and returns the backend.
fn check_signature(func: &ItemFn, batch: Option<&BatchArgs>) -> syn::Result<BackendKind> {
    const SHAPE: &str = "expected `async fn name(ctx: &mut datamig::Ctx<'_, Postgres>) -> anyhow::Result<()>` \
                         (or `Ctx<'_, Sqlite>`, or `async fn name<DB: datamig::Backend>(ctx: &mut Ctx<'_, DB>)` for every backend)";
    const BATCHED: &str = "expected `async fn name(ctx: &mut datamig::Ctx<'_, Postgres>, batch: datamig::Batch) \
                           -> anyhow::Result<()>` (or `Ctx<'_, Sqlite>`, or generic over `DB: datamig::Backend`) \
                           with `batch(table = \"..\", key = \"..\")`";
    let shape = if batch.is_some() { BATCHED } else { SHAPE };
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            format!("a migration must be an `async fn`: {shape}"),
        ));
    }
    let generic = backend_param(&sig.generics).map_err(|why| {
        syn::Error::new(
            sig.generics.span(),
            format!("{why}: a migration is generic over its backend only, as `<DB: datamig::Backend>`; {shape}"),
        )
    })?;
    let typed: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .map(|arg| match arg {
            FnArg::Typed(t) => Ok(t),
            FnArg::Receiver(r) => Err(syn::Error::new(
                r.span(),
                format!("a migration is a free function, not a method: {shape}"),
            )),
        })
        .collect::<syn::Result<_>>()?;
    match (typed.len(), batch) {
        (1, None) | (2, Some(_)) => {}
        (2, None) if last_segment_is(&typed[1].ty, "Batch") => {
            return Err(syn::Error::new(
                typed[1].ty.span(),
                format!(
                    "a batched migration needs `batch(table = \"..\", key = \"..\")` in #[migration]: {BATCHED}"
                ),
            ));
        }
        (1, Some(b)) => {
            return Err(syn::Error::new(
                b.span,
                format!("a batched migration takes a second argument, its batch: {BATCHED}"),
            ));
        }
        (0, _) => {
            return Err(syn::Error::new(
                sig.ident.span(),
                format!("a migration takes exactly one argument, its context: {shape}"),
            ));
        }
        _ => {
            return Err(syn::Error::new(
                typed[0].span(),
                format!("a migration takes exactly one argument, its context: {shape}"),
            ));
        }
    }
    let backend = ctx_backend(&typed[0].ty, generic.as_ref()).ok_or_else(|| {
        let expected = match &generic {
            Some(param) => format!("`&mut Ctx<'_, {param}>`"),
            None => "`&mut Ctx<'_, Postgres>`, `&mut Ctx<'_, Sqlite>` or `&mut Ctx<'_, MySql>`"
                .to_string(),
        };
        syn::Error::new(
            typed[0].ty.span(),
            format!("the argument must be {expected}: {shape}"),
        )
    })?;
    if let Some(second) = typed.get(1)
        && !last_segment_is(&second.ty, "Batch")
    {
        return Err(syn::Error::new(
            second.ty.span(),
            format!("the second argument must be `datamig::Batch`: {shape}"),
        ));
    }
    match &sig.output {
        ReturnType::Type(_, ty) if last_segment_is(ty, "Result") => {}
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.ident.span(),
                format!("a migration returns `anyhow::Result<()>`: {shape}"),
            ));
        }
        other => {
            return Err(syn::Error::new(
                other.span(),
                format!("a migration returns `anyhow::Result<()>`: {shape}"),
            ));
        }
    }
    Ok(backend)
}

/// The backend parameter of a generic migration (`<DB: Backend>`, or `<DB>` with
/// `where DB: Backend`), `None` for a migration that is not generic, or why the generics
/// are not that.
fn backend_param(generics: &syn::Generics) -> Result<Option<syn::Ident>, String> {
    if generics.params.is_empty() && generics.where_clause.is_none() {
        return Ok(None);
    }
    let mut params = generics.params.iter();
    let (Some(syn::GenericParam::Type(param)), None) = (params.next(), params.next()) else {
        return Err("unexpected generic parameters".to_string());
    };
    let bounded = |bounds: &syn::punctuated::Punctuated<syn::TypeParamBound, syn::Token![+]>| {
        bounds.iter().any(|b| {
            matches!(b, syn::TypeParamBound::Trait(t)
                if t.path.segments.last().is_some_and(|s| s.ident == "Backend"))
        })
    };
    let in_where = generics.where_clause.as_ref().is_some_and(|w| {
        w.predicates.iter().any(|p| match p {
            syn::WherePredicate::Type(t) => {
                matches!(&t.bounded_ty, Type::Path(p) if p.path.is_ident(&param.ident))
                    && bounded(&t.bounds)
            }
            _ => false,
        })
    });
    if !(bounded(&param.bounds) || in_where) {
        return Err(format!("`{}` is not bounded by `Backend`", param.ident));
    }
    Ok(Some(param.ident.clone()))
}

/// Recognises `&mut Ctx<'_, Postgres>`, `&mut Ctx<'_, Sqlite>` (any path ending in `Ctx`
/// and the backend's name) and, for a generic migration, `&mut Ctx<'_, DB>`.
fn ctx_backend(ty: &Type, param: Option<&syn::Ident>) -> Option<BackendKind> {
    let Type::Reference(reference) = ty else {
        return None;
    };
    reference.mutability?;
    let Type::Path(path) = &*reference.elem else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Ctx" {
        return None;
    }
    let PathArguments::AngleBracketed(generic) = &last.arguments else {
        return None;
    };
    let mut types = generic.args.iter().filter_map(|arg| match arg {
        GenericArgument::Type(ty) => Some(ty),
        _ => None,
    });
    let db = types.next()?;
    if types.next().is_some() {
        return None;
    }
    match param {
        Some(param) => {
            matches!(db, Type::Path(p) if p.path.is_ident(param)).then_some(BackendKind::Portable)
        }
        None if last_segment_is(db, "Postgres") => Some(BackendKind::Postgres),
        None if last_segment_is(db, "Sqlite") => Some(BackendKind::Sqlite),
        None if last_segment_is(db, "MySql") => Some(BackendKind::MySql),
        None => None,
    }
}

fn last_segment_is(ty: &Type, name: &str) -> bool {
    matches!(ty, Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == name))
}

/// The function's doc comment, lines joined and trimmed: the migration's description.
fn doc_text(attrs: &[syn::Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => lit_str(&nv.value).ok(),
            _ => None,
        })
        .map(|line| line.trim().to_string())
        .collect();
    lines.join("\n").trim().to_string()
}

/// SHA-256 (lowercase hex) of the migration's code: the context type and the body, as tokens.
///
/// Tokens, not text, so that formatting and ordinary comments do not change the checksum
/// while any edit to the code does. The function's name, its doc comment and its other
/// attributes are left out: renaming or re-describing a migration is not a change of what it
/// does. Code the body calls is not seen; `revision = N` marks such a change.
fn checksum(func: &ItemFn) -> String {
    let mut canonical = String::new();
    if let Some(FnArg::Typed(arg)) = func.sig.inputs.first() {
        write_canonical(&mut canonical, arg.ty.to_token_stream());
    }
    canonical.push('|');
    write_canonical(&mut canonical, func.block.to_token_stream());
    let digest = Sha256::digest(canonical.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A serialisation of tokens that depends on nothing but the tokens themselves: one space
/// between tokens, groups bracketed by their delimiters, punctuation marked when joined to
/// the next token (so `a + = b` and `a += b` differ, as they do for the compiler).
fn write_canonical(out: &mut String, tokens: TokenStream2) {
    for token in tokens {
        match token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                out.push(' ');
                write_canonical(out, group.stream());
                out.push_str(close);
            }
            TokenTree::Ident(ident) => out.push_str(&ident.to_string()),
            TokenTree::Punct(punct) => {
                out.push(punct.as_char());
                if punct.spacing() == proc_macro2::Spacing::Joint {
                    out.push('~');
                }
            }
            TokenTree::Literal(lit) => out.push_str(&lit.to_string()),
        }
        out.push(' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(code: &str) -> String {
        checksum(&syn::parse_str::<ItemFn>(code).unwrap())
    }

    #[test]
    fn formatting_and_comments_do_not_change_the_checksum() {
        let a = sum(
            "async fn m(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> { let n = 1 + 2; Ok(()) }",
        );
        let b = sum(
            "/// New doc.\nasync fn renamed(c: &mut Ctx<'_, Postgres>)\n -> anyhow::Result<()> {\n    // why\n    let n =\n        1+2;\n    Ok(())\n}",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn an_edited_body_changes_the_checksum() {
        let a = sum(
            "async fn m(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> { let n = 1 + 2; Ok(()) }",
        );
        let b = sum(
            "async fn m(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> { let n = 1 + 3; Ok(()) }",
        );
        let c = sum(
            "async fn m(ctx: &mut Ctx<'_, Postgres>) -> anyhow::Result<()> { let n = 1 += 2; Ok(()) }",
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn durations_parse_with_units() {
        let ms = |s: &str| duration_ms(&syn::parse_str(&format!("{s:?}")).unwrap());
        assert_eq!(ms("500ms").unwrap(), 500);
        assert_eq!(ms("5s").unwrap(), 5_000);
        assert_eq!(ms("2min").unwrap(), 120_000);
        assert_eq!(ms("1h").unwrap(), 3_600_000);
        assert!(ms("5").is_err());
        assert!(ms("0s").is_err());
        assert!(ms("fast").is_err());
    }
}
