package imageapi

import (
	"fmt"

	imagev1 "github.com/openshift/api/image/v1"
	openshiftopenapi "github.com/openshift/api/openapi/generated_openapi"
	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/apiserver/pkg/registry/rest"
	genericapiserver "k8s.io/apiserver/pkg/server"
	genericoptions "k8s.io/apiserver/pkg/server/options"
	"k8s.io/apiserver/pkg/util/compatibility"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/kube-openapi/pkg/common"
	kubeopenapi "k8s.io/kubernetes/pkg/generated/openapi"
)

const etcdPathPrefix = "/registry/image.openshift.io"

// NewCommand returns the image-apiserver command. Its flags are
// k8s.io/apiserver's recommended options (secure serving, delegated
// authentication and authorization, etcd, audit, ...).
func NewCommand() *cobra.Command {
	o := genericoptions.NewRecommendedOptions(etcdPathPrefix, Codecs.LegacyCodec(imagev1.GroupVersion))
	o.Etcd.StorageConfig.EncodeVersioner = runtime.NewMultiGroupVersioner(imagev1.GroupVersion,
		schema.GroupKind{Group: imagev1.GroupName})
	// No admission chain: the group has no admission plugins of its own.
	o.Admission = nil

	cmd := &cobra.Command{
		Use:   "image-apiserver",
		Short: "Serve OpenShift's image.openshift.io/v1 ImageStream and Image as an aggregated API",
		RunE: func(c *cobra.Command, _ []string) error {
			if errs := o.Validate(); len(errs) > 0 {
				return fmt.Errorf("invalid flags: %v", errs)
			}
			return run(c, o)
		},
	}
	o.AddFlags(cmd.Flags())
	return cmd
}

// openAPIDefinitions: OpenShift's generated definitions plus Kubernetes' own
// for the shared types the generic server documents (version.Info, ...).
func openAPIDefinitions(ref common.ReferenceCallback) map[string]common.OpenAPIDefinition {
	defs := kubeopenapi.GetOpenAPIDefinitions(ref)
	for name, def := range openshiftopenapi.GetOpenAPIDefinitions(ref) {
		defs[name] = def
	}
	return defs
}

func run(c *cobra.Command, o *genericoptions.RecommendedOptions) error {
	config := genericapiserver.NewRecommendedConfig(Codecs)
	namer := openapi.NewDefinitionNamer(openAPIScheme)
	config.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(openAPIDefinitions, namer)
	config.OpenAPIConfig.Info.Title = "OpenShift image API (scapguard dev)"
	config.OpenAPIConfig.Info.Version = "v1"
	config.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(openAPIDefinitions, namer)
	config.OpenAPIV3Config.Info.Title = config.OpenAPIConfig.Info.Title
	config.OpenAPIV3Config.Info.Version = "v1"
	config.FeatureGate = utilfeature.DefaultFeatureGate
	config.EffectiveVersion = compatibility.DefaultBuildEffectiveVersion()
	if err := o.ApplyTo(config); err != nil {
		return err
	}

	server, err := config.Complete().New("image-apiserver", genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}
	images, err := newImageStore(config.RESTOptionsGetter)
	if err != nil {
		return err
	}
	streams, streamStatus, err := newStreamStores(config.RESTOptionsGetter)
	if err != nil {
		return err
	}
	group := genericapiserver.NewDefaultAPIGroupInfo(imagev1.GroupName, Scheme, metav1.ParameterCodec, Codecs)
	group.VersionedResourcesStorageMap[imagev1.GroupVersion.Version] = map[string]rest.Storage{
		"images":              images,
		"imagestreams":        streams,
		"imagestreams/status": streamStatus,
	}
	if err := server.InstallAPIGroup(&group); err != nil {
		return err
	}
	return server.PrepareRun().RunWithContext(c.Context())
}
