#!/bin/bash
# The docker-compose Kafka broker (apache/kafka image): one KRaft node (broker + controller) that
# authenticates every connection and authorises every request.
#   clients (9092): SASL_PLAINTEXT, SCRAM-SHA-512; users and ACLs from `defectstream kafka-init`
#                   (streams/kafka/security.py): cameras write `frames` only, each service its own topics
#   controller (9093): SASL_PLAINTEXT, PLAIN (KRaft controllers take no SCRAM), the admin only
#   StandardAuthorizer, no ACL = denied; User:admin (the broker itself, kafka-init, operators) is the super user.
# KAFKA_ADMIN_PASSWORD comes from the environment, no default (letters, digits and -_.~ only: it is
# written into JAAS and --add-scram values). The admin's SCRAM credential is created when the log
# directory is formatted, i.e. on the first start with an empty `kafka-data` volume.
set -euo pipefail
: "${KAFKA_ADMIN_PASSWORD:?set KAFKA_ADMIN_PASSWORD}"
if [[ ! "$KAFKA_ADMIN_PASSWORD" =~ ^[A-Za-z0-9._~-]+$ ]]; then
  echo "KAFKA_ADMIN_PASSWORD may hold only letters, digits and -_.~" >&2
  exit 2
fi
KAFKA_CLUSTER_ID="${KAFKA_CLUSTER_ID:-ZGVmZWN0c3RyZWFtLWtyYQ}"  # a KRaft cluster id: 16 bytes, base64
KAFKA_HOME="${KAFKA_HOME:-/opt/kafka}"
PROPS=/tmp/server.properties
CLIENT=/tmp/admin-client.properties

cat > "$PROPS" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@kafka:9093
listeners=SASL_PLAINTEXT://:9092,CONTROLLER://:9093
advertised.listeners=SASL_PLAINTEXT://kafka:9092
inter.broker.listener.name=SASL_PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=/var/lib/kafka/data
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# --- security (tests/integration/test_kafka_scram_acls.py runs a broker with exactly these lines) ---
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}" user_admin="${KAFKA_ADMIN_PASSWORD}";
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
# --- end security ---
EOF

cat > "$CLIENT" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${KAFKA_ADMIN_PASSWORD}";
EOF

"$KAFKA_HOME/bin/kafka-storage.sh" format --ignore-formatted -t "$KAFKA_CLUSTER_ID" -c "$PROPS" \
  --add-scram "SCRAM-SHA-512=[name=admin,password=${KAFKA_ADMIN_PASSWORD}]"
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$PROPS"
