//! esxcli on an ESXi host through the vSphere API, as govmomi's esxcli executor runs it (and
//! so Forklift's populator): `RetrieveManagedMethodExecuter` on the HostSystem gives a
//! `ReflectManagedMethodExecuter`, whose `ExecuteSoap` runs one command: moid
//! `ha-cli-handler-<namespace words joined by ->`, method `vim.EsxCLI.<words joined by .>`,
//! version `urn:vim25/5.0`, each parameter as `name` and `val` = `<name>value</name>`. The
//! answer's `response` is an XML document (`<obj xsi:type=...>`): an `ArrayOfDataObject` is one
//! row per `DataObject`, an `xsd:` type a plain value, anything else one row; a failed command
//! answers `fault` (`faultMsg`, and `faultDetail` with the command's `errMsg` lines).
//!
//! Parsers are apart from I/O. Forklift's `vmkfstools` plugin answers rows with `status` and
//! `message` (JSON): a status other than `0` is a failure of the plugin.

use std::sync::Arc;
use std::time::Duration;

use transfer_core::delta::vsphere::xml::{self, escape, moref, Node};
use transfer_core::delta::vsphere::Client;
use transfer_core::error::peer_text;
use transfer_core::source::retry::RetryPolicy;
use transfer_core::{Error, ErrorKind, Result};

/// How a command whose call failed in a way that may pass is sent again: twice more, 1 s then
/// 2 s later.
const CALL_RETRY: RetryPolicy = RetryPolicy {
    retries: 2,
    delay: Duration::from_secs(1),
};

/// What one command answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Rows of fields (field name, value; a multi-valued field repeats its name).
    Rows(Vec<Vec<(String, String)>>),
    /// A plain value.
    Value(String),
}

impl Answer {
    /// The rows (a plain value has none).
    pub fn rows(&self) -> &[Vec<(String, String)>] {
        match self {
            Answer::Rows(r) => r,
            Answer::Value(_) => &[],
        }
    }
}

/// The first value of field `name` in `row`.
pub fn field<'a>(row: &'a [(String, String)], name: &str) -> Option<&'a str> {
    row.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Why a command failed on the host (its fault), or `None` if it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFault {
    /// The command's error lines, or the fault's summary.
    pub message: String,
}

/// The ExecuteSoap request body for `esxcli WORDS` with `args` (parameter name, value).
pub fn execute_soap(executer: &str, words: &[&str], args: &[(&str, &str)]) -> String {
    let ns = &words[..words.len().saturating_sub(1)];
    let mut out = format!(
        r#"<ExecuteSoap xmlns="urn:vim25">{}<moid>ha-cli-handler-{}</moid><version>urn:vim25/5.0</version><method>vim.EsxCLI.{}</method>"#,
        moref("_this", "ReflectManagedMethodExecuter", executer),
        escape(&ns.join("-")),
        escape(&words.join("."))
    );
    // In parameter-name order, as govmomi's executor sends them (the order of the command's
    // CLI info).
    let mut args = args.to_vec();
    args.sort_by_key(|(name, _)| *name);
    for (name, val) in args {
        // The value is an XML fragment inside a string: escaped once for the fragment and
        // once more for the envelope.
        let frag = format!("<{name}>{}</{name}>", escape(val));
        out.push_str(&format!(
            "<argument><name>{}</name><val>{}</val></argument>",
            escape(name),
            escape(&frag)
        ));
    }
    out.push_str("</ExecuteSoap>");
    out
}

/// Reads an ExecuteSoap answer: the command's answer, or its fault.
pub fn parse_execute(
    answer: &Node,
    what: &str,
) -> Result<std::result::Result<Answer, CommandFault>> {
    // An empty list comes back as no returnval at all.
    let Some(rv) = answer.child("returnval") else {
        return Ok(Ok(Answer::Rows(Vec::new())));
    };
    if let Some(f) = rv.child("fault") {
        return Ok(Err(command_fault(f, what)));
    }
    let Some(resp) = rv.text_of("response").filter(|r| !r.is_empty()) else {
        return Ok(Ok(Answer::Rows(Vec::new())));
    };
    let obj = xml::parse(resp.as_bytes(), &format!("esxcli {what}"))?;
    Ok(Ok(answer_of(&obj)))
}

/// The fault of a failed command: its `errMsg` lines when the detail has them.
fn command_fault(f: &Node, what: &str) -> CommandFault {
    let summary = f.text_of("faultMsg").unwrap_or("").to_owned();
    let mut lines = Vec::new();
    if let Some(detail) = f.text_of("faultDetail").filter(|d| !d.is_empty()) {
        if let Ok(obj) = xml::parse(detail.as_bytes(), &format!("esxcli {what} fault")) {
            collect_err(&obj, &mut lines);
        }
    }
    let message = if lines.is_empty() {
        summary
    } else {
        lines.join("; ")
    };
    CommandFault {
        message: peer_text(&message),
    }
}

fn collect_err(n: &Node, out: &mut Vec<String>) {
    for c in &n.children {
        if c.name == "errMsg" && !c.text.trim().is_empty() {
            out.push(c.text.trim().to_owned());
        } else {
            collect_err(c, out);
        }
    }
}

/// The rows or value of a response document.
fn answer_of(obj: &Node) -> Answer {
    let row = |n: &Node| {
        n.children
            .iter()
            .map(|c| (c.name.clone(), c.text.trim().to_owned()))
            .collect::<Vec<_>>()
    };
    match obj.xsi_type.as_deref() {
        Some("ArrayOfDataObject") => Answer::Rows(obj.all("DataObject").map(row).collect()),
        Some(t) if is_xsd(t) => Answer::Value(obj.text.trim().to_owned()),
        _ if obj.children.is_empty() => Answer::Value(obj.text.trim().to_owned()),
        _ => Answer::Rows(vec![row(obj)]),
    }
}

/// Whether `t` is an XML schema type (`string`, `boolean`, `long`, ...), as the parser leaves
/// it without its prefix.
fn is_xsd(t: &str) -> bool {
    matches!(
        t,
        "string" | "boolean" | "long" | "int" | "short" | "byte" | "double" | "float" | "dateTime"
    )
}

/// esxcli on one ESXi host, over a vSphere API session.
#[derive(Clone)]
pub struct Esxcli {
    client: Arc<Client>,
    executer: String,
    host: String,
}

impl Esxcli {
    /// The esxcli executor of `host` (a HostSystem moref value).
    pub async fn new(client: Arc<Client>, host: &str) -> Result<Esxcli> {
        let body = format!(
            r#"<RetrieveManagedMethodExecuter xmlns="urn:vim25">{}</RetrieveManagedMethodExecuter>"#,
            moref("_this", "HostSystem", host)
        );
        let what = format!("the esxcli executor of {host}");
        let answer = client.invoke_read(&what, &body).await?;
        let executer = xml::returned_moref(&answer).ok_or_else(|| {
            Error::new(
                ErrorKind::Protocol,
                format!("vSphere: {host} gave no esxcli executor"),
            )
        })?;
        Ok(Esxcli {
            client,
            executer,
            host: host.to_owned(),
        })
    }

    /// Runs `esxcli WORDS` with `args`: its answer, or its fault (the command failed on the
    /// host). Transport and session errors are errors.
    pub async fn try_run(
        &self,
        words: &[&str],
        args: &[(&str, &str)],
    ) -> Result<std::result::Result<Answer, CommandFault>> {
        let what = words.join(" ");
        let body = execute_soap(&self.executer, words, args);
        let mut tries = 0;
        let answer = loop {
            tries += 1;
            match self
                .client
                .invoke(&format!("esxcli {what} on {}", self.host), &body)
                .await
            {
                Ok(a) => break a,
                // A vCenter or host that hiccups (a dropped connection, a busy answer, a
                // transient fault): the command is sent again, unless it starts a clone that
                // may have started already (only a connection that failed is certain not to).
                Err(e)
                    if tries <= CALL_RETRY.retries
                        && e.kind().is_transient()
                        && (words != ["vmkfstools", "clone"] || e.kind() == ErrorKind::Connect) =>
                {
                    let of = CALL_RETRY.retries + 1;
                    tracing::warn!("esxcli {what} (try {tries} of {of}): {e}");
                    tokio::time::sleep(CALL_RETRY.backoff(tries)).await;
                }
                Err(e) => return Err(e),
            }
        };
        parse_execute(&answer, &what)
    }

    /// Runs `esxcli WORDS` with `args`; a failed command is an error with the host's message.
    pub async fn run(&self, words: &[&str], args: &[(&str, &str)]) -> Result<Answer> {
        self.try_run(words, args).await?.map_err(|f| {
            Error::new(
                ErrorKind::Server,
                format!("esxcli {} on {}: {}", words.join(" "), self.host, f.message),
            )
        })
    }

    /// Runs a command of Forklift's `vmkfstools` plugin: its `message` when `status` is `0`.
    pub async fn plugin(&self, cmd: &str, args: &[(&str, &str)]) -> Result<String> {
        let a = self.run(&["vmkfstools", cmd], args).await?;
        plugin_message(&a).map_err(|m| {
            Error::new(
                ErrorKind::Server,
                format!("vmkfstools {cmd} on {}: {m}", self.host),
            )
        })
    }
}

/// The `message` of a plugin answer whose `status` is `0`, else what went wrong.
pub fn plugin_message(a: &Answer) -> std::result::Result<String, String> {
    let mut message = String::new();
    let mut status = None;
    for row in a.rows() {
        if let Some(s) = field(row, "status") {
            status = Some(s.to_owned());
        }
        if let Some(m) = field(row, "message") {
            message.push_str(m);
        }
    }
    match status.as_deref() {
        Some("0") => Ok(message),
        Some(s) => Err(format!(
            "failed (status {}): {}",
            peer_text(s),
            peer_text(&message)
        )),
        None => {
            Err("the answer has no status (is Forklift's vmkfstools-wrapper VIB installed?)".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soap_answer(inner: &str) -> Node {
        let env = format!(
            r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><ExecuteSoapResponse xmlns="urn:vim25"><returnval>{inner}</returnval></ExecuteSoapResponse></soapenv:Body></soapenv:Envelope>"#
        );
        let root = xml::parse(env.as_bytes(), "test").unwrap();
        xml::body(&root, "test").unwrap()
    }

    #[test]
    fn a_request_names_the_handler_method_and_escaped_arguments() {
        let r = execute_soap(
            "ha-mme",
            &["storage", "core", "device", "list"],
            &[("device", "naa.6<&")],
        );
        assert!(
            r.contains("<moid>ha-cli-handler-storage-core-device</moid>"),
            "{r}"
        );
        assert!(
            r.contains("<method>vim.EsxCLI.storage.core.device.list</method>"),
            "{r}"
        );
        assert!(
            r.contains("<val>&lt;device&gt;naa.6&amp;lt;&amp;amp;&lt;/device&gt;</val>"),
            "{r}"
        );
    }

    #[test]
    fn rows_values_and_faults_are_read() {
        let rows = soap_answer(
            r#"<response>&lt;obj xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="urn:vim25" versionId="5.0" xsi:type="ArrayOfDataObject"&gt;&lt;DataObject xsi:type="VimEsxCLIstoragecoredevicelistScsiDevice"&gt;&lt;Device&gt;naa.1&lt;/Device&gt;&lt;Status&gt;on&lt;/Status&gt;&lt;/DataObject&gt;&lt;/obj&gt;</response>"#,
        );
        let a = parse_execute(&rows, "x").unwrap().unwrap();
        assert_eq!(field(&a.rows()[0], "Status"), Some("on"));

        let plugin = soap_answer(
            r#"<response>&lt;obj xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="urn:vim25" versionId="5.0" xsi:type="VimEsxCLIvmkfstoolstaskGetresult"&gt;&lt;message&gt;{"exitCode": ""}&lt;/message&gt;&lt;status&gt;0&lt;/status&gt;&lt;/obj&gt;</response>"#,
        );
        let a = parse_execute(&plugin, "x").unwrap().unwrap();
        assert_eq!(plugin_message(&a).unwrap(), r#"{"exitCode": ""}"#);

        let failed = soap_answer(
            r#"<response>&lt;obj xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="urn:vim25" xsi:type="VimEsxCLIvmkfstoolscloneresult"&gt;&lt;message&gt;bad path&lt;/message&gt;&lt;status&gt;1&lt;/status&gt;&lt;/obj&gt;</response>"#,
        );
        let a = parse_execute(&failed, "x").unwrap().unwrap();
        assert!(plugin_message(&a).unwrap_err().contains("bad path"));

        let fault = soap_answer(
            r#"<fault><faultMsg>EsxCLI.CLIFault.summary</faultMsg><faultDetail>&lt;obj xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns="urn:vim25" versionId="5.0" xsi:type="VimFault"&gt;&lt;fault xsi:type="VimEsxCLICLIFault"&gt;&lt;errMsg&gt;Unable to find device with name naa.2&lt;/errMsg&gt;&lt;/fault&gt;&lt;/obj&gt;</faultDetail></fault>"#,
        );
        let f = parse_execute(&fault, "x").unwrap().unwrap_err();
        assert_eq!(f.message, "Unable to find device with name naa.2");
        assert!(parse_execute(&soap_answer("<response>&lt;obj</response>"), "x").is_err());
        let root = xml::parse(br#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><ExecuteSoapResponse xmlns="urn:vim25"/></soapenv:Body></soapenv:Envelope>"#, "t").unwrap();
        let empty = xml::body(&root, "t").unwrap();
        assert_eq!(
            parse_execute(&empty, "x").unwrap().unwrap(),
            Answer::Rows(vec![])
        );
    }
}
