"""The Kubernetes resources the exporter knows by name: one table of (group, version, plural, kind, namespaced).

`kubeapi` lists and watches some of them, the audit builds the apiserver's admission requests for them, and
the probe names the kind of the object in its AdmissionReview. A resource the table does not hold (a custom
resource, usually) gets its kind guessed from its plural, here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        return f"{base}/namespaces/{namespace}/{self.plural}" if namespace else f"{base}/{self.plural}"


def _r(group: str, plural: str, kind: str, namespaced: bool = True, version: str = "v1") -> Resource:
    return Resource(group, version, plural, kind, namespaced)


# core
PODS = _r("", "pods", "Pod")
NAMESPACES = _r("", "namespaces", "Namespace", False)
NODES = _r("", "nodes", "Node", False)
SERVICES = _r("", "services", "Service")
ENDPOINTS = _r("", "endpoints", "Endpoints")
CONFIG_MAPS = _r("", "configmaps", "ConfigMap")
SECRETS = _r("", "secrets", "Secret")
SERVICE_ACCOUNTS = _r("", "serviceaccounts", "ServiceAccount")
PERSISTENT_VOLUME_CLAIMS = _r("", "persistentvolumeclaims", "PersistentVolumeClaim")
PERSISTENT_VOLUMES = _r("", "persistentvolumes", "PersistentVolume", False)
EVENTS = _r("", "events", "Event")
# workloads
DEPLOYMENTS = _r("apps", "deployments", "Deployment")
REPLICA_SETS = _r("apps", "replicasets", "ReplicaSet")
STATEFUL_SETS = _r("apps", "statefulsets", "StatefulSet")
DAEMON_SETS = _r("apps", "daemonsets", "DaemonSet")
JOBS = _r("batch", "jobs", "Job")
CRON_JOBS = _r("batch", "cronjobs", "CronJob")
# the control plane's own bookkeeping
LEASES = _r("coordination.k8s.io", "leases", "Lease")
ENDPOINT_SLICES = _r("discovery.k8s.io", "endpointslices", "EndpointSlice")
SERVICE_CIDRS = _r("networking.k8s.io", "servicecidrs", "ServiceCIDR", False)
IP_ADDRESSES = _r("networking.k8s.io", "ipaddresses", "IPAddress", False)
# networking, RBAC, certificates
INGRESSES = _r("networking.k8s.io", "ingresses", "Ingress")
NETWORK_POLICIES = _r("networking.k8s.io", "networkpolicies", "NetworkPolicy")
ROLES = _r("rbac.authorization.k8s.io", "roles", "Role")
ROLE_BINDINGS = _r("rbac.authorization.k8s.io", "rolebindings", "RoleBinding")
CLUSTER_ROLES = _r("rbac.authorization.k8s.io", "clusterroles", "ClusterRole", False)
CLUSTER_ROLE_BINDINGS = _r("rbac.authorization.k8s.io", "clusterrolebindings", "ClusterRoleBinding", False)
CERTIFICATE_SIGNING_REQUESTS = _r("certificates.k8s.io", "certificatesigningrequests", "CertificateSigningRequest",
                                  False)
# admission configuration
VALIDATING_CONFIGS = _r("admissionregistration.k8s.io", "validatingwebhookconfigurations",
                        "ValidatingWebhookConfiguration", False)
MUTATING_CONFIGS = _r("admissionregistration.k8s.io", "mutatingwebhookconfigurations",
                      "MutatingWebhookConfiguration", False)
# virtual resources: created to ask a question, never stored
TOKEN_REVIEWS = _r("authentication.k8s.io", "tokenreviews", "TokenReview", False)
SELF_SUBJECT_REVIEWS = _r("authentication.k8s.io", "selfsubjectreviews", "SelfSubjectReview", False)
SUBJECT_ACCESS_REVIEWS = _r("authorization.k8s.io", "subjectaccessreviews", "SubjectAccessReview", False)
SELF_SUBJECT_ACCESS_REVIEWS = _r("authorization.k8s.io", "selfsubjectaccessreviews", "SelfSubjectAccessReview", False)
LOCAL_SUBJECT_ACCESS_REVIEWS = _r("authorization.k8s.io", "localsubjectaccessreviews", "LocalSubjectAccessReview")
SELF_SUBJECT_RULES_REVIEWS = _r("authorization.k8s.io", "selfsubjectrulesreviews", "SelfSubjectRulesReview", False)

TABLE: tuple[Resource, ...] = (
    PODS, NAMESPACES, NODES, SERVICES, ENDPOINTS, CONFIG_MAPS, SECRETS, SERVICE_ACCOUNTS, PERSISTENT_VOLUME_CLAIMS,
    PERSISTENT_VOLUMES, EVENTS, DEPLOYMENTS, REPLICA_SETS, STATEFUL_SETS, DAEMON_SETS, JOBS, CRON_JOBS, LEASES,
    ENDPOINT_SLICES, SERVICE_CIDRS, IP_ADDRESSES, INGRESSES, NETWORK_POLICIES, ROLES, ROLE_BINDINGS, CLUSTER_ROLES,
    CLUSTER_ROLE_BINDINGS, CERTIFICATE_SIGNING_REQUESTS, VALIDATING_CONFIGS, MUTATING_CONFIGS, TOKEN_REVIEWS,
    SELF_SUBJECT_REVIEWS, SUBJECT_ACCESS_REVIEWS, SELF_SUBJECT_ACCESS_REVIEWS, LOCAL_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_RULES_REVIEWS,
)
_BY_NAME = {(r.group, r.plural): r for r in TABLE}
_KIND_BY_PLURAL = {r.plural: r.kind for r in reversed(TABLE)}  # a plural in two groups: the first row's kind


def find(group: str, plural: str) -> Resource | None:
    return _BY_NAME.get((group, plural))


def kind_of(plural: str) -> str:
    """The kind of a resource by its plural: the table's, else the plural made singular and capitalised."""
    if plural in _KIND_BY_PLURAL:
        return _KIND_BY_PLURAL[plural]
    singular = plural[:-1] if plural.endswith("s") else plural
    return singular[:1].upper() + singular[1:]


def lookup(group: str, version: str, plural: str, *, namespaced: bool) -> Resource:
    """The table's row for (group, plural), else one made up from what a webhook rule says of it."""
    return find(group, plural) or Resource(group, version, plural, kind_of(plural), namespaced)
