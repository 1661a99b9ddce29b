// Package imageapi serves OpenShift's image.openshift.io/v1 ImageStream and
// Image kinds as an aggregated API server, on k8s.io/apiserver's generic
// registry with etcd storage (the k8s.io/sample-apiserver pattern), using the
// real Go types from github.com/openshift/api. It exists only for scapguard's
// local control plane: on OpenShift the openshift-apiserver serves this group.
package imageapi

import (
	imagev1 "github.com/openshift/api/image/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
)

var (
	// Scheme knows the external v1 types and, for the generic registry, the
	// same Go types as the group's internal version: with one Go type behind
	// both, converting between them is a copy (no conversion functions).
	Scheme = runtime.NewScheme()
	// Codecs serialise the group's objects.
	Codecs = serializer.NewCodecFactory(Scheme)
	// openAPIScheme has only the external version, so OpenAPI definitions
	// never mention the internal one.
	openAPIScheme = runtime.NewScheme()

	internalGV = schema.GroupVersion{Group: imagev1.GroupName, Version: runtime.APIVersionInternal}
)

func init() {
	utilruntime.Must(imagev1.Install(Scheme))
	Scheme.AddKnownTypes(internalGV,
		&imagev1.Image{}, &imagev1.ImageList{},
		&imagev1.ImageStream{}, &imagev1.ImageStreamList{},
	)
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	unversioned := schema.GroupVersion{Group: "", Version: "v1"}
	Scheme.AddUnversionedTypes(unversioned,
		&metav1.Status{}, &metav1.APIVersions{}, &metav1.APIGroupList{},
		&metav1.APIGroup{}, &metav1.APIResourceList{},
	)
	utilruntime.Must(imagev1.Install(openAPIScheme))
}
