//! The CNI protocol as the spec (1.0.0 / 1.1.0, and 0.4.0 results) defines it: the
//! environment, the configuration on stdin, errors with their codes, and versions. Nothing here
//! touches the system, so all of it is unit- and property-tested.

use std::path::PathBuf;

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};

/// Versions podnet speaks.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];
/// The version used for answers when the request names none.
pub const DEFAULT_VERSION: &str = "1.1.0";

/// Error codes from the spec.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// podnet's own: the datapath (maps, programs) failed, or cannot be set up (the pin
    /// directory is not on bpffs, or holds maps of another podnet version).
    pub const DATAPATH: u32 = 100;
}

/// A CNI error: printed as the spec's JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ));
            }
        })
    }
}

/// The environment of one invocation, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: Option<String>,
    /// `None` when empty or unset (allowed for DEL).
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: Vec<(String, String)>,
}

/// Container IDs: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_container_id(id: &str) -> bool {
    id.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Interface names: 1-15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

impl CniEnv {
    /// Reads and checks the environment through `get` (so tests need not set real variables).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let invalid = |msg: String| Err(CniError::new(code::INVALID_ENV, msg));
        let command = match get("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => return invalid("CNI_COMMAND is not set".to_owned()),
        };
        if command == Command::Version {
            // VERSION reads nothing else, as the reference plugins do.
            return Ok(Self {
                command,
                container_id: None,
                netns: None,
                ifname: None,
                args: Vec::new(),
            });
        }
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let container_id = nonempty("CNI_CONTAINERID");
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        let ifname = nonempty("CNI_IFNAME");
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        if needs_container {
            let Some(id) = &container_id else {
                return invalid(format!("CNI_CONTAINERID is required for {command:?}"));
            };
            if !valid_container_id(id) {
                return invalid(format!(
                    "CNI_CONTAINERID {id:?} must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"
                ));
            }
            let Some(ifname) = &ifname else {
                return invalid(format!("CNI_IFNAME is required for {command:?}"));
            };
            if !valid_ifname(ifname) {
                return invalid(format!(
                    "CNI_IFNAME {ifname:?} is not a valid interface name (1-15 bytes, no '/', ':' or whitespace)"
                ));
            }
        }
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return invalid(format!("CNI_NETNS is required for {command:?}"));
        }
        if matches!(command, Command::Gc) && get("CNI_PATH").is_none() {
            return invalid("CNI_PATH is required for GC".to_owned());
        }
        let mut args = Vec::new();
        for pair in get("CNI_ARGS").unwrap_or_default().split(';') {
            if pair.is_empty() {
                continue;
            }
            let Some((k, v)) = pair.split_once('=') else {
                return invalid(format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"));
            };
            args.push((k.to_owned(), v.to_owned()));
        }
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }

    /// The attachment key `containerID/ifname` (ADD, DEL, CHECK only).
    pub fn attachment(&self) -> (String, String) {
        (
            self.container_id.clone().unwrap_or_default(),
            self.ifname.clone().unwrap_or_default(),
        )
    }
}

/// The member `name` of a JSON object, found the way Go's `encoding/json` finds a struct
/// field: the exact name, else a name equal to it ignoring (ASCII) case. The runtimes and
/// the reference plugins are Go and read CNI JSON that way, and runtimes write what they
/// like: containerd's CRI plugin sends `runtimeConfig.portMappings` with Go's field names
/// (`{"HostPort":38080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}`).
pub fn member<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| {
        obj.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// Decodes the object `value` as the struct `T` like Go's `encoding/json` would: each of
/// `names` (`T`'s field names as serde knows them) is looked up with [`member`]; other members
/// are dropped, as unknown members are ignored anyway. Anything but an object is refused (serde
/// alone would also take a list of the field values).
fn from_go_json<T: DeserializeOwned>(value: &Value, names: &[&str]) -> serde_json::Result<T> {
    let Value::Object(obj) = value else {
        return Err(serde::de::Error::invalid_type(
            unexpected(value),
            &"a JSON object",
        ));
    };
    let folded = names
        .iter()
        .filter_map(|name| Some(((*name).to_owned(), member(obj, name)?.clone())))
        .collect();
    serde_json::from_value(Value::Object(folded))
}

/// What a non-object JSON value is, for [`from_go_json`]'s error.
fn unexpected(value: &Value) -> serde::de::Unexpected<'_> {
    use serde::de::Unexpected;
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(_) => Unexpected::Other("a number"),
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

/// [`from_go_json`] for each element of a JSON list.
fn list_from_go_json<T: DeserializeOwned>(
    value: &Value,
    names: &[&str],
) -> serde_json::Result<Vec<T>> {
    match value {
        Value::Array(items) => items.iter().map(|item| from_go_json(item, names)).collect(),
        other => serde_json::from_value(other.clone()),
    }
}

/// A port mapping from `runtimeConfig.portMappings`: the names of the portmap plugin's
/// `PortMapEntry` (`hostPort`, `containerPort`, `protocol`, `hostIP`), in any case.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    #[serde(rename = "hostPort")]
    pub host_port: u16,
    #[serde(rename = "containerPort")]
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

impl PortMapping {
    /// The member names [`from_go_json`] looks up.
    const FIELDS: [&str; 4] = ["hostPort", "containerPort", "protocol", "hostIP"];
}

impl PortMapping {
    /// Refuses what no runtime means: port 0 on either side, a protocol other than TCP or UDP.
    pub fn check(&self) -> Result<(), CniError> {
        let Self {
            host_port,
            container_port,
            protocol,
            host_ip: _,
        } = self;
        if *host_port == 0 || *container_port == 0 {
            return Err(config_err(format!(
                "runtimeConfig.portMappings: hostPort {host_port} -> containerPort {container_port}: ports are 1-65535"
            )));
        }
        if !["tcp", "udp"].contains(&protocol.to_ascii_lowercase().as_str()) {
            return Err(config_err(format!(
                "runtimeConfig.portMappings: protocol {protocol:?} of hostPort {host_port} is not tcp or udp"
            )));
        }
        Ok(())
    }
}

fn default_protocol() -> String {
    "tcp".to_owned()
}

/// One `{containerID, ifname}` of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl ValidAttachment {
    /// The member names [`from_go_json`] looks up.
    const FIELDS: [&str; 2] = ["containerID", "ifname"];
}

/// How podnet works with the plugins before it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// After `bridge` + `host-local`: podnet takes over the datapath of what they made.
    #[default]
    Chained,
    /// Alone: podnet makes the bridge, veth, address and routes itself.
    Standalone,
}

/// The plugin's configuration on stdin. The node settings stay raw JSON: they become
/// `NodeSettings`, which checks them itself.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub node: Option<serde_json::Map<String, Value>>,
    /// Raw, so a chained ADD prints it back with no field lost.
    pub prev_result: Option<Value>,
    pub port_mappings: Vec<PortMapping>,
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

fn config_err(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

impl NetConf {
    /// Parses stdin. Unknown fields are ignored (they belong to the runtime or other plugins);
    /// names are matched as Go matches them (see [`member`]). `prevResult` is kept raw: libcni
    /// always writes it with the result types' own names.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "the network configuration is not valid JSON")
                .with_details(e.to_string())
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration is not a JSON object",
            ));
        };
        let string = |key: &str| -> Result<Option<String>, CniError> {
            match member(&obj, key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(config_err(format!("{key} must be a string"))),
            }
        };
        let cni_version = string("cniVersion")?
            .ok_or_else(|| config_err("cniVersion is missing from the network configuration"))?;
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {cni_version} is not supported; podnet speaks {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = string("name")?.unwrap_or_default();
        let mode = match member(&obj, "mode") {
            None | Some(Value::Null) => Mode::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| config_err("mode must be \"chained\" or \"standalone\""))?,
        };
        let state_dir =
            string("stateDir")?.map_or_else(crate::config::default_state_dir, PathBuf::from);
        if !state_dir.is_absolute() {
            return Err(config_err(format!(
                "stateDir {} must be an absolute path",
                state_dir.display()
            )));
        }
        let node = match member(&obj, "node") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map.clone()),
            Some(_) => return Err(config_err("node must be an object of node settings")),
        };
        let prev_result = member(&obj, "prevResult").filter(|v| !v.is_null()).cloned();
        let port_mappings: Vec<PortMapping> = match member(&obj, "runtimeConfig")
            .and_then(Value::as_object)
            .and_then(|rc| member(rc, "portMappings"))
        {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => list_from_go_json(v, &PortMapping::FIELDS).map_err(|e| {
                config_err("runtimeConfig.portMappings is not a list of port mappings")
                    .with_details(e.to_string())
            })?,
        };
        for m in &port_mappings {
            m.check()?;
        }
        let attachments = member(&obj, "cni.dev/valid-attachments")
            .or_else(|| member(&obj, "cni.dev/attachments"));
        let valid_attachments = match attachments {
            None | Some(Value::Null) => None,
            Some(v) => Some(list_from_go_json(v, &ValidAttachment::FIELDS).map_err(|e| {
                config_err("cni.dev/valid-attachments is not a list of {containerID, ifname}")
                    .with_details(e.to_string())
            })?),
        };
        Ok(Self {
            cni_version,
            name,
            mode,
            state_dir,
            node,
            prev_result,
            port_mappings,
            valid_attachments,
        })
    }
}

/// The version an answer is given in: the configuration's, when it could be read.
pub fn answer_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            member(v.as_object()?, "cniVersion")?
                .as_str()
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| DEFAULT_VERSION.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn environment_rules() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(env(&add).is_ok());
        let code_of = |pairs: &[(&str, &str)]| env(pairs).err().map(|e| e.code);
        assert_eq!(code_of(&add[..3]), Some(code::INVALID_ENV), "no ifname");
        assert_eq!(code_of(&[("CNI_COMMAND", "ADD")]), Some(code::INVALID_ENV));
        assert_eq!(code_of(&[("CNI_COMMAND", "FOO")]), Some(code::INVALID_ENV));
        assert_eq!(code_of(&[]), Some(code::INVALID_ENV));
        let mut bad_id = add;
        bad_id[1] = ("CNI_CONTAINERID", "-bad");
        assert_eq!(code_of(&bad_id), Some(code::INVALID_ENV));
        let mut bad_if = add;
        bad_if[3] = ("CNI_IFNAME", "way-too-long-ifname");
        assert_eq!(code_of(&bad_if), Some(code::INVALID_ENV));
        // DEL may come without a namespace.
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        assert_eq!(env(&del).map(|e| e.netns), Ok(None));
        assert_eq!(code_of(&[("CNI_COMMAND", "GC")]), Some(code::INVALID_ENV));
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        let args = env(&[("CNI_COMMAND", "STATUS"), ("CNI_ARGS", "A=1;B=2")]).unwrap();
        assert_eq!(args.args.len(), 2);
        assert_eq!(
            code_of(&[("CNI_COMMAND", "STATUS"), ("CNI_ARGS", "junk")]),
            Some(code::INVALID_ENV)
        );
        // VERSION reads nothing but the command.
        assert!(env(&[("CNI_COMMAND", "VERSION"), ("CNI_ARGS", "junk")]).is_ok());
    }

    #[test]
    fn configuration_rules() {
        let ok = br#"{"cniVersion":"1.0.0","name":"n","type":"podnet","extra":{"kept":1},
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
            "prevResult":{"cniVersion":"1.0.0","interfaces":[],"ips":[],"custom":true}}"#;
        let conf = NetConf::parse(ok).unwrap();
        assert_eq!(conf.port_mappings[0].host_port, 8080);
        assert_eq!(conf.prev_result.unwrap()["custom"], true);
        assert_eq!(conf.mode, Mode::Chained);
        let code_of = |s: &[u8]| NetConf::parse(s).err().map(|e| e.code);
        assert_eq!(code_of(b"{"), Some(code::DECODE));
        assert_eq!(code_of(b"[]"), Some(code::DECODE));
        assert_eq!(code_of(br#"{"name":"n"}"#), Some(code::INVALID_CONFIG));
        assert_eq!(
            code_of(br#"{"cniVersion":"9.9.9"}"#),
            Some(code::INCOMPATIBLE_VERSION)
        );
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","mode":"other"}"#),
            Some(code::INVALID_CONFIG)
        );
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","stateDir":"relative"}"#),
            Some(code::INVALID_CONFIG)
        );
        for bad in [
            r#"{"hostPort":0,"containerPort":80}"#,
            r#"{"hostPort":8080,"containerPort":0}"#,
            r#"{"hostPort":70000,"containerPort":80}"#,
            r#"{"hostPort":8080,"containerPort":80,"protocol":"sctp"}"#,
        ] {
            let conf =
                format!(r#"{{"cniVersion":"1.0.0","runtimeConfig":{{"portMappings":[{bad}]}}}}"#);
            assert_eq!(
                code_of(conf.as_bytes()),
                Some(code::INVALID_CONFIG),
                "{bad}"
            );
        }
        let gc = br#"{"cniVersion":"1.1.0","cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        assert_eq!(
            NetConf::parse(gc).unwrap().valid_attachments.unwrap().len(),
            1
        );
    }

    #[test]
    fn runtime_json_is_read_with_go_names_in_any_case() {
        // containerd 1.6's CRI plugin, verbatim: Go's field names, an empty HostIP.
        let containerd = br#"{"cniVersion":"1.0.0","name":"n","type":"podnet",
            "runtimeConfig":{"portMappings":[{"HostPort":38080,"ContainerPort":80,"Protocol":"tcp","HostIP":""},
                {"HostPort":38081,"ContainerPort":53,"Protocol":"udp","HostIP":"198.18.0.10"}]}}"#;
        let conf = NetConf::parse(containerd).unwrap();
        assert_eq!(
            conf.port_mappings,
            [
                PortMapping {
                    host_port: 38080,
                    container_port: 80,
                    protocol: "tcp".to_owned(),
                    host_ip: Some(String::new()),
                },
                PortMapping {
                    host_port: 38081,
                    container_port: 53,
                    protocol: "udp".to_owned(),
                    host_ip: Some("198.18.0.10".to_owned()),
                },
            ]
        );
        // Any case of any name, as Go's encoding/json; the exact name wins over a folded one.
        let mixed = br#"{"CNIVERSION":"1.1.0","Name":"n","MODE":"standalone","StateDir":"/tmp/x",
            "RuntimeConfig":{"PORTMAPPINGS":[{"hostport":1,"containerPORT":2,"HOSTPORT":3,"hostPort":4}]},
            "PrevResult":{"ips":[]},
            "CNI.DEV/Valid-Attachments":[{"ContainerId":"a","IFNAME":"eth0"}]}"#;
        let conf = NetConf::parse(mixed).unwrap();
        assert_eq!(conf.cni_version, "1.1.0");
        assert_eq!(conf.mode, Mode::Standalone);
        assert_eq!(conf.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(conf.prev_result, Some(json!({"ips": []})));
        assert_eq!(
            (
                conf.port_mappings[0].host_port,
                conf.port_mappings[0].container_port
            ),
            (4, 2)
        );
        assert_eq!(conf.port_mappings[0].protocol, "tcp", "the default");
        assert_eq!(
            conf.valid_attachments,
            Some(vec![ValidAttachment {
                container_id: "a".to_owned(),
                ifname: "eth0".to_owned(),
            }])
        );
        assert_eq!(answer_version(br#"{"CniVersion":"0.4.0"}"#), "0.4.0");
        // Folding does not make bad mappings good: still checked, still typed.
        let code_of = |s: &[u8]| NetConf::parse(s).err().map(|e| e.code);
        for bad in [
            r#"{"HostPort":0,"ContainerPort":80}"#,
            r#"{"HostPort":"8080","ContainerPort":80}"#,
            r#"{"HostPort":8080}"#,
            r#"{"HostPort":8080,"ContainerPort":80,"Protocol":"SCTP"}"#,
            r#"{"Host_Port":8080,"ContainerPort":80}"#,
            r#"[8080,80]"#,
        ] {
            let conf =
                format!(r#"{{"cniVersion":"1.0.0","runtimeConfig":{{"portMappings":[{bad}]}}}}"#);
            assert_eq!(
                code_of(conf.as_bytes()),
                Some(code::INVALID_CONFIG),
                "{bad}"
            );
        }
        assert_eq!(
            code_of(br#"{"cniVersion":"1.0.0","RuntimeConfig":{"PortMappings":{"HostPort":1}}}"#),
            Some(code::INVALID_CONFIG),
            "not a list"
        );
    }

    /// A small deterministic generator (xorshift), so the property test needs no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap_or(1)).unwrap_or(0)
        }
    }

    #[test]
    fn parsing_never_panics_on_mutated_input() {
        let seeds: [&[u8]; 4] = [
            br#"{"cniVersion":"1.0.0","RuntimeConfig":{"portMappings":[{"HostPort":38080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}]}}"#,
            br#"{"cniVersion":"1.0.0","name":"n","type":"podnet","mode":"standalone","stateDir":"/tmp/x","node":{"pod_cidr":"10.0.0.0/24"},"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80}]}}"#,
            br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
            br#"{"cniVersion":"0.4.0","prevResult":{"interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0}]}}"#,
        ];
        let alphabet = b"{}[]\":,0123456789abcdefxyz-./\\ \n\t\x00\xff";
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..20_000 {
            let mut input = seeds[round % seeds.len()].to_vec();
            for _ in 0..=rng.below(8) {
                let at = rng.below(input.len() + 1);
                match rng.below(3) {
                    0 if at < input.len() => {
                        input.remove(at);
                    }
                    1 => input.insert(at, alphabet[rng.below(alphabet.len())]),
                    _ if at < input.len() => input[at] = alphabet[rng.below(alphabet.len())],
                    _ => {}
                }
            }
            let _ = NetConf::parse(&input);
            let _ = answer_version(&input);
            let text = String::from_utf8_lossy(&input).into_owned();
            let _ = CniEnv::from_lookup(|k| match k {
                "CNI_COMMAND" => Some(["ADD", "DEL", "GC", "X"][round % 4].to_owned()),
                "CNI_CONTAINERID" | "CNI_IFNAME" | "CNI_ARGS" | "CNI_NETNS" => {
                    Some(text.chars().take(20).collect())
                }
                _ => None,
            });
        }
    }
}
