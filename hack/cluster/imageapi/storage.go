package imageapi

import (
	"context"

	imagev1 "github.com/openshift/api/image/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/generic"
	genericregistry "k8s.io/apiserver/pkg/registry/generic/registry"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/storage/names"
)

func newImageStore(optsGetter generic.RESTOptionsGetter) (*genericregistry.Store, error) {
	strategy := imageStrategy{Scheme, names.SimpleNameGenerator}
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return &imagev1.Image{} },
		NewListFunc:               func() runtime.Object { return &imagev1.ImageList{} },
		PredicateFunc:             matcher,
		DefaultQualifiedResource:  imagev1.Resource("images"),
		SingularQualifiedResource: imagev1.Resource("image"),
		CreateStrategy:            strategy,
		UpdateStrategy:            strategy,
		DeleteStrategy:            strategy,
		TableConvertor:            rest.NewDefaultTableConvertor(imagev1.Resource("images")),
	}
	return store, store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: getAttrs})
}

func newStreamStores(optsGetter generic.RESTOptionsGetter) (*genericregistry.Store, *StatusREST, error) {
	strategy := streamStrategy{Scheme, names.SimpleNameGenerator}
	store := &genericregistry.Store{
		NewFunc:                   func() runtime.Object { return &imagev1.ImageStream{} },
		NewListFunc:               func() runtime.Object { return &imagev1.ImageStreamList{} },
		PredicateFunc:             matcher,
		DefaultQualifiedResource:  imagev1.Resource("imagestreams"),
		SingularQualifiedResource: imagev1.Resource("imagestream"),
		CreateStrategy:            strategy,
		UpdateStrategy:            strategy,
		DeleteStrategy:            strategy,
		TableConvertor:            rest.NewDefaultTableConvertor(imagev1.Resource("imagestreams")),
	}
	if err := store.CompleteWithOptions(&generic.StoreOptions{RESTOptions: optsGetter, AttrFunc: getAttrs}); err != nil {
		return nil, nil, err
	}
	statusStore := *store
	statusStore.UpdateStrategy = streamStatusStrategy{strategy}
	return store, &StatusREST{store: &statusStore}, nil
}

// StatusREST serves imagestreams/status: get, update and patch.
type StatusREST struct {
	store *genericregistry.Store
}

var _ rest.Patcher = &StatusREST{}

// New returns an empty ImageStream.
func (r *StatusREST) New() runtime.Object { return &imagev1.ImageStream{} }

// Destroy is a no-op: the main store owns the storage.
func (r *StatusREST) Destroy() {}

// Get retrieves the ImageStream.
func (r *StatusREST) Get(ctx context.Context, name string, options *metav1.GetOptions) (runtime.Object, error) {
	return r.store.Get(ctx, name, options)
}

// Update changes only the status of an ImageStream.
func (r *StatusREST) Update(ctx context.Context, name string, objInfo rest.UpdatedObjectInfo,
	createValidation rest.ValidateObjectFunc, updateValidation rest.ValidateObjectUpdateFunc,
	_ bool, options *metav1.UpdateOptions) (runtime.Object, bool, error) {
	// Status never creates the object.
	return r.store.Update(ctx, name, objInfo, createValidation, updateValidation, false, options)
}
