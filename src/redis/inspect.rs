//! Reading what Redis says about itself: INFO's `field:value` lines, the
//! replicas a primary lists, and CLUSTER NODES.

use std::collections::HashMap;

/// `INFO` with the sections the health prober reads.
pub fn info_command() -> redis::Cmd {
    let mut command = redis::cmd("INFO");
    command
        .arg("server")
        .arg("replication")
        .arg("memory")
        .arg("persistence");
    command
}

/// INFO's (or CLUSTER INFO's) fields by name.
pub fn parse_info(info: &str) -> HashMap<&str, &str> {
    info.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.trim_end().split_once(':'))
        .collect()
}

/// The `host:port` of each replica a primary's INFO lists (`slave0`, `slave1`…).
pub fn replicas(info: &HashMap<&str, &str>) -> Vec<String> {
    (0..)
        .map_while(|index| info.get(format!("slave{index}").as_str()).copied())
        .filter_map(|replica| {
            let field = |name: &str| {
                replica
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            };
            Some(format!("{}:{}", field("ip")?, field("port")?))
        })
        .collect()
}

/// One line of CLUSTER NODES.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Where it listens.
    pub host: String,
    /// Its client port.
    pub port: u16,
    /// A primary (flag `master`).
    pub primary: bool,
    /// Failed, suspected, without an address, or still in the handshake.
    pub failed: bool,
    /// It lists slots.
    pub serves_slots: bool,
}

impl ClusterNode {
    /// `host:port`.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// `<id> <ip:port@cport[,hostname]> <flags> <primary> <ping> <pong> <epoch> <link> <slot>…`
pub fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let flags = fields.get(2)?;
            let failed = flags
                .split(',')
                .any(|flag| matches!(flag, "fail" | "fail?" | "noaddr" | "handshake"));
            Some(ClusterNode {
                host: host.to_owned(),
                port: port.parse().ok()?,
                primary: flags.split(',').any(|flag| flag == "master"),
                failed,
                serves_slots: fields.len() > 8,
            })
        })
        .filter(|node| !node.host.is_empty() && node.port != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_replicas_are_read_from_their_lines() {
        let text = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
                    slave0:ip=10.0.0.2,port=6380,state=online,offset=1,lag=0\r\n\
                    slave1:ip=10.0.0.3,port=6381,state=online,offset=1,lag=0\r\n";
        let info = parse_info(text);
        assert_eq!(info.get("role"), Some(&"master"));
        assert_eq!(replicas(&info), ["10.0.0.2:6380", "10.0.0.3:6381"]);
    }

    #[test]
    fn cluster_nodes_name_their_role_health_and_slots() {
        let text = "a 127.0.0.1:7000@17000,host-a myself,master - 0 0 1 connected 0-8191\n\
                    b 127.0.0.1:7001@17001 master,fail - 0 0 2 disconnected\n\
                    c 127.0.0.1:7002@17002 slave a 0 0 1 connected\n\
                    d :0@0 handshake - 0 0 0 disconnected\n";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(nodes.len(), 3, "{nodes:?}");
        assert!(nodes[0].primary && nodes[0].serves_slots && !nodes[0].failed);
        assert_eq!(nodes[0].address(), "127.0.0.1:7000");
        assert!(nodes[1].primary && nodes[1].failed && !nodes[1].serves_slots);
        assert!(!nodes[2].primary);
    }
}
