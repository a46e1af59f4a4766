//! The vim25 SOAP messages ferry sends and the answers it reads, as pure code over bytes: request
//! envelopes (with every value escaped), a small namespace-aware tree built with quick-xml from
//! an answer (bounded in depth and size: the answer comes from the network), and the extraction
//! of faults, the service content, a moref, virtual disks and changed disk areas from it.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::error::{ErrorKind, Result};

/// The vSphere API namespace.
pub const VIM25: &str = "urn:vim25";
const SOAPENV: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 64;
/// Most elements accepted in one answer.
const MAX_NODES: usize = 500_000;

/// One element: local name, namespace, `xsi:type` (local part), children, and text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// Local name.
    pub name: String,
    /// Namespace URI, when bound.
    pub ns: Option<String>,
    /// The `xsi:type` attribute without its prefix.
    pub xsi_type: Option<String>,
    /// The `type` attribute (managed object references carry it).
    pub mo_type: Option<String>,
    /// The `name` attribute (the fields of esxcli's XML output carry it).
    pub name_attr: Option<String>,
    /// Child elements.
    pub children: Vec<Node>,
    /// Text content (concatenated).
    pub text: String,
}

impl Node {
    /// The first child named `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }

    /// Every child named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The trimmed text of the child `name`.
    pub fn text_of(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.trim())
    }

    /// The child `name` as an integer.
    pub fn int_of(&self, name: &str) -> Option<i64> {
        self.text_of(name)?.parse().ok()
    }
}

/// Parses an answer into its root element.
pub fn parse(body: &[u8], what: &str) -> Result<Node> {
    let mut r = NsReader::from_reader(body);
    r.config_mut().trim_text(false);
    let mut stack: Vec<Node> = Vec::new();
    let mut nodes = 0usize;
    let mut root: Option<Node> = None;
    let mut buf = Vec::new();
    loop {
        let (ns, ev) = r.read_resolved_event_into(&mut buf).map_err(|e| {
            ErrorKind::Protocol.about(
                format_args!("vSphere {}", what),
                format!("malformed XML: {e}"),
            )
        })?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                nodes += 1;
                if nodes > MAX_NODES || stack.len() >= MAX_DEPTH {
                    return Err(ErrorKind::Protocol.about(
                        format_args!("vSphere {}", what),
                        "answer too large or too deeply nested",
                    ));
                }
                let mut node = Node {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ns: match ns {
                        ResolveResult::Bound(n) => {
                            Some(String::from_utf8_lossy(n.as_ref()).into_owned())
                        }
                        _ => None,
                    },
                    ..Node::default()
                };
                for a in e.attributes() {
                    let a = a.map_err(|e| {
                        ErrorKind::Protocol.about(
                            format_args!("vSphere {}", what),
                            format!("malformed attribute: {e}"),
                        )
                    })?;
                    let (ans, local) = r.resolve_attribute(a.key);
                    let value = a.unescape_value().map_err(|e| {
                        ErrorKind::Protocol.about(
                            format_args!("vSphere {}", what),
                            format!("malformed attribute: {e}"),
                        )
                    })?;
                    let local = local.as_ref();
                    let is_xsi =
                        matches!(ans, ResolveResult::Bound(n) if n.as_ref() == XSI.as_bytes());
                    if is_xsi && local == b"type" {
                        let v = value.rsplit(':').next().unwrap_or("").to_owned();
                        node.xsi_type = Some(v);
                    } else if local == b"type" {
                        node.mo_type = Some(value.into_owned());
                    } else if local == b"name" {
                        node.name_attr = Some(value.into_owned());
                    }
                }
                if matches!(ev, Event::Empty(_)) {
                    attach(&mut stack, &mut root, node);
                } else {
                    stack.push(node);
                }
            }
            Event::End(_) => {
                let node = stack.pop().ok_or_else(|| {
                    ErrorKind::Protocol.about(format_args!("vSphere {}", what), "unbalanced XML")
                })?;
                attach(&mut stack, &mut root, node);
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let t = t.unescape().map_err(|e| {
                        ErrorKind::Protocol.about(
                            format_args!("vSphere {}", what),
                            format!("malformed text: {e}"),
                        )
                    })?;
                    top.text.push_str(&t);
                }
            }
            Event::CData(t) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err(ErrorKind::Protocol.about(
            format_args!("vSphere {}", what),
            "the answer ends inside an element",
        ));
    }
    root.ok_or_else(|| ErrorKind::Protocol.about(format_args!("vSphere {}", what), "empty answer"))
}

fn attach(stack: &mut [Node], root: &mut Option<Node>, node: Node) {
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => {
            if root.is_none() {
                *root = Some(node);
            }
        }
    }
}

/// The first element of the SOAP body (the answer, or a Fault).
pub fn body(root: &Node, what: &str) -> Result<Node> {
    if root.name != "Envelope" || root.ns.as_deref() != Some(SOAPENV) {
        return Err(
            ErrorKind::Protocol.about(format_args!("vSphere {}", what), "not a SOAP envelope")
        );
    }
    root.child("Body")
        .and_then(|b| b.children.first())
        .cloned()
        .ok_or_else(|| {
            ErrorKind::Protocol.about(format_args!("vSphere {}", what), "empty SOAP body")
        })
}

/// A SOAP fault: the vim25 fault type (`NotAuthenticated`, `InvalidArgument`, `FileFault`,
/// ...) and the server's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The fault type without `Fault` suffix of its detail element.
    pub kind: String,
    /// The faultstring.
    pub message: String,
}

/// The fault in a SOAP body element, if it is one.
pub fn fault(body: &Node) -> Option<Fault> {
    if body.name != "Fault" {
        return None;
    }
    let message = crate::error::peer_text(body.text_of("faultstring").unwrap_or(""));
    let kind = body
        .child("detail")
        .and_then(|d| d.children.first())
        .map(|d| {
            d.xsi_type
                .clone()
                .unwrap_or_else(|| d.name.strip_suffix("Fault").unwrap_or(&d.name).to_owned())
        })
        .map(|k| crate::error::peer_text(&k))
        .unwrap_or_else(|| "unknown".to_owned());
    Some(Fault { kind, message })
}

/// Escapes text for an element or attribute value.
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// A request envelope around `inner` (already escaped XML).
pub fn envelope(inner: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="{SOAPENV}" xmlns:xsi="{XSI}" xmlns:xsd="http://www.w3.org/2001/XMLSchema"><soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>"#
    )
}

/// A managed object reference element.
pub fn moref(elem: &str, ty: &str, value: &str) -> String {
    format!(
        r#"<{elem} type="{}">{}</{elem}>"#,
        escape(ty),
        escape(value)
    )
}

/// The managed objects of the service content ferry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContent {
    /// The session manager.
    pub session_manager: String,
    /// The search index.
    pub search_index: String,
    /// The property collector.
    pub property_collector: String,
}

/// Reads `RetrieveServiceContentResponse`.
pub fn service_content(answer: &Node) -> Result<ServiceContent> {
    let what = "service content";
    let rv = answer.child("returnval").ok_or_else(|| {
        ErrorKind::Protocol.about(format_args!("vSphere {}", what), "no returnval")
    })?;
    let get = |k: &str| {
        rv.text_of(k)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                ErrorKind::Protocol.about(format_args!("vSphere {}", what), format!("no {k}"))
            })
    };
    Ok(ServiceContent {
        session_manager: get("sessionManager")?,
        search_index: get("searchIndex")?,
        property_collector: get("propertyCollector")?,
    })
}

/// The moref in a `returnval`, or `None` when the answer has none (not found).
pub fn returned_moref(answer: &Node) -> Option<String> {
    answer
        .text_of("returnval")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A virtual disk of a VM or snapshot configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDisk {
    /// The device key (QueryChangedDiskAreas' deviceKey).
    pub key: i32,
    /// The backing file, `[datastore] vm/vm.vmdk`.
    pub file_name: String,
    /// The backing's change id, when CBT is on.
    pub change_id: Option<String>,
    /// Capacity in bytes.
    pub capacity: u64,
    /// The backing's parents, nearest first: the files a snapshot froze (`vm.vmdk` under
    /// `vm-000001.vmdk`).
    pub parents: Vec<String>,
}

impl VirtualDisk {
    /// Whether `file` is this disk's backing file or one of its parents (a controller names
    /// a disk by its base file; after a snapshot the VM writes to a child of it).
    pub fn is_backed_by(&self, file: &str) -> bool {
        self.file_name == file || self.parents.iter().any(|p| p == file)
    }
}

/// The first property value (`val`) of a RetrieveProperties(Ex) answer for one object.
pub fn property_value(answer: &Node) -> Option<&Node> {
    let rv = answer.child("returnval")?;
    let obj = rv.child("objects").unwrap_or(rv);
    obj.all("propSet").find_map(|ps| ps.child("val"))
}

/// The virtual disks in a RetrieveProperties(Ex) answer for `config.hardware.device`.
pub fn virtual_disks(answer: &Node) -> Result<Vec<VirtualDisk>> {
    let what = "device list";
    let mut out = Vec::new();
    let rv = answer.child("returnval").ok_or_else(|| {
        ErrorKind::Protocol.about(
            format_args!("vSphere {}", what),
            "the object or property was not found",
        )
    })?;
    // RetrievePropertiesEx: returnval/objects/propSet; RetrieveProperties: returnval/propSet.
    let objects: Vec<&Node> = if rv.child("objects").is_some() {
        rv.all("objects").collect()
    } else {
        answer.all("returnval").collect()
    };
    for obj in objects {
        for ps in obj.all("propSet") {
            let Some(val) = ps.child("val") else { continue };
            for dev in &val.children {
                if dev.xsi_type.as_deref() != Some("VirtualDisk") {
                    continue;
                }
                let key = dev
                    .int_of("key")
                    .and_then(|k| i32::try_from(k).ok())
                    .ok_or_else(|| {
                        ErrorKind::Protocol
                            .about(format_args!("vSphere {}", what), "a disk without a key")
                    })?;
                let backing = dev.child("backing").ok_or_else(|| {
                    ErrorKind::Protocol.about(
                        format_args!("vSphere {}", what),
                        format!("disk {key} without backing"),
                    )
                })?;
                let capacity = match dev.int_of("capacityInBytes") {
                    Some(b) if b >= 0 => b as u64,
                    _ => dev
                        .int_of("capacityInKB")
                        .filter(|k| *k >= 0)
                        .and_then(|k| (k as u64).checked_mul(1024))
                        .ok_or_else(|| {
                            ErrorKind::Protocol.about(
                                format_args!("vSphere {}", what),
                                format!("disk {key} without capacity"),
                            )
                        })?,
                };
                let mut parents = Vec::new();
                let mut up = backing.child("parent");
                while let Some(p) = up {
                    parents.push(p.text_of("fileName").unwrap_or("").to_owned());
                    up = p.child("parent");
                }
                out.push(VirtualDisk {
                    key,
                    parents,
                    file_name: backing.text_of("fileName").unwrap_or("").to_owned(),
                    change_id: backing
                        .text_of("changeId")
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                    capacity,
                });
            }
        }
    }
    Ok(out)
}

/// One page of QueryChangedDiskAreas: the range it covers and the changed areas in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeInfo {
    /// Start of the covered range.
    pub start: u64,
    /// Length of the covered range.
    pub length: u64,
    /// Changed areas `(start, length)`.
    pub areas: Vec<(u64, u64)>,
}

/// Reads `QueryChangedDiskAreasResponse`.
pub fn change_info(answer: &Node) -> Result<ChangeInfo> {
    let what = "changed disk areas";
    let rv = answer.child("returnval").ok_or_else(|| {
        ErrorKind::Protocol.about(format_args!("vSphere {}", what), "no returnval")
    })?;
    let num = |n: &Node, k: &str| {
        n.int_of(k)
            .filter(|v| *v >= 0)
            .map(|v| v as u64)
            .ok_or_else(|| {
                ErrorKind::Protocol.about(
                    format_args!("vSphere {}", what),
                    format!("missing or negative '{k}'"),
                )
            })
    };
    let mut areas = Vec::new();
    for a in rv.all("changedArea") {
        areas.push((num(a, "start")?, num(a, "length")?));
    }
    Ok(ChangeInfo {
        start: num(rv, "startOffset")?,
        length: num(rv, "length")?,
        areas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(inner: &str) -> Vec<u8> {
        format!(
            r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="{SOAPENV}" xmlns:xsi="{XSI}"><soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>"#
        )
        .into_bytes()
    }

    fn answer(inner: &str) -> Node {
        body(&parse(&wrap(inner), "test").unwrap(), "test").unwrap()
    }

    #[test]
    fn service_content_names_the_managers() {
        let a = answer(
            r#"<RetrieveServiceContentResponse xmlns="urn:vim25"><returnval><rootFolder type="Folder">group-d1</rootFolder><propertyCollector type="PropertyCollector">propertyCollector</propertyCollector><searchIndex type="SearchIndex">SearchIndex</searchIndex><sessionManager type="SessionManager">SessionManager</sessionManager></returnval></RetrieveServiceContentResponse>"#,
        );
        assert_eq!(a.ns.as_deref(), Some(VIM25));
        let sc = service_content(&a).unwrap();
        assert_eq!(sc.session_manager, "SessionManager");
        assert_eq!(sc.search_index, "SearchIndex");
        assert_eq!(sc.property_collector, "propertyCollector");
    }

    #[test]
    fn faults_carry_their_vim25_type() {
        let a = answer(
            r#"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>A specified parameter was not correct: changeId</faultstring><detail><InvalidArgumentFault xmlns="urn:vim25" xsi:type="InvalidArgument"><invalidProperty>changeId</invalidProperty></InvalidArgumentFault></detail></soapenv:Fault>"#,
        );
        let f = fault(&a).unwrap();
        assert_eq!(f.kind, "InvalidArgument");
        assert!(f.message.contains("changeId"));
        let a = answer(
            r#"<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>The session is not authenticated.</faultstring><detail><NotAuthenticatedFault xmlns="urn:vim25"></NotAuthenticatedFault></detail></soapenv:Fault>"#,
        );
        assert_eq!(fault(&a).unwrap().kind, "NotAuthenticated");
        assert!(fault(&answer(r#"<X xmlns="urn:vim25"/>"#)).is_none());
    }

    #[test]
    fn disks_come_from_the_device_list() {
        let a = answer(
            r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-42</obj><propSet><name>config.hardware.device</name><val xsi:type="ArrayOfVirtualDevice"><VirtualDevice xsi:type="VirtualIDEController"><key>200</key></VirtualDevice><VirtualDevice xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[LocalDS_0] vm/vm.vmdk</fileName><changeId>52 2d 8e 1a 0c 7b 51 f6-9c 5d 3e 21 a4 9f 07 7b/3</changeId></backing><capacityInKB>1024</capacityInKB><capacityInBytes>1048576</capacityInBytes></VirtualDevice><VirtualDevice xsi:type="VirtualDisk"><key>2001</key><backing><fileName>[ds] vm/b.vmdk</fileName></backing><capacityInKB>2048</capacityInKB></VirtualDevice></val></propSet></objects></returnval></RetrievePropertiesExResponse>"#,
        );
        let d = virtual_disks(&a).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].key, 2000);
        assert_eq!(d[0].file_name, "[LocalDS_0] vm/vm.vmdk");
        assert_eq!(
            d[0].change_id.as_deref(),
            Some("52 2d 8e 1a 0c 7b 51 f6-9c 5d 3e 21 a4 9f 07 7b/3")
        );
        assert_eq!(d[0].capacity, 1 << 20);
        assert_eq!((d[1].change_id.as_deref(), d[1].capacity), (None, 2 << 20));
        assert!(d[0].parents.is_empty());
    }

    #[test]
    fn a_disk_after_snapshots_is_backed_by_its_parents() {
        let a = answer(
            r#"<RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><propSet><val><VirtualDevice xsi:type="VirtualDisk"><key>2000</key><backing><fileName>[ds] vm/vm-000002.vmdk</fileName><parent><fileName>[ds] vm/vm-000001.vmdk</fileName><parent><fileName>[ds] vm/vm.vmdk</fileName></parent></parent></backing><capacityInBytes>1048576</capacityInBytes></VirtualDevice></val></propSet></objects></returnval></RetrievePropertiesExResponse>"#,
        );
        let d = &virtual_disks(&a).unwrap()[0];
        assert_eq!(d.parents, ["[ds] vm/vm-000001.vmdk", "[ds] vm/vm.vmdk"]);
        assert!(d.is_backed_by("[ds] vm/vm.vmdk") && d.is_backed_by("[ds] vm/vm-000002.vmdk"));
        assert!(!d.is_backed_by("[ds] vm/other.vmdk"));
    }

    #[test]
    fn changed_areas_parse_and_bad_numbers_are_refused() {
        let a = answer(
            r#"<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>0</startOffset><length>1048576</length><changedArea><start>0</start><length>65536</length></changedArea><changedArea><start>131072</start><length>65536</length></changedArea></returnval></QueryChangedDiskAreasResponse>"#,
        );
        let c = change_info(&a).unwrap();
        assert_eq!((c.start, c.length), (0, 1 << 20));
        assert_eq!(c.areas, vec![(0, 65536), (131072, 65536)]);
        let a = answer(
            r#"<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval><startOffset>-1</startOffset><length>1</length></returnval></QueryChangedDiskAreasResponse>"#,
        );
        assert!(change_info(&a).is_err());
    }

    #[test]
    fn hostile_answers_are_errors_not_panics() {
        for b in [
            &b""[..],
            b"<",
            b"<a><b></a>",
            b"<soapenv:Envelope xmlns:soapenv='x'/>",
            b"\xff\xfe<a/>",
            b"<a>&bogus;</a>",
        ] {
            let r = parse(b, "t").and_then(|n| body(&n, "t"));
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(b));
        }
        let deep = "<a>".repeat(1000);
        assert!(parse(deep.as_bytes(), "t").is_err());
    }

    #[test]
    fn requests_escape_their_values() {
        let m = moref("_this", "VirtualMachine", "vm-1<&>");
        assert_eq!(
            m,
            r#"<_this type="VirtualMachine">vm-1&lt;&amp;&gt;</_this>"#
        );
        assert!(envelope(&m).contains("<soapenv:Body><_this"));
    }
}
