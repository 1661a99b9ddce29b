package imageapi

import (
	"context"
	"fmt"
	"regexp"

	imagev1 "github.com/openshift/api/image/v1"
	genericvalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/generic"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/names"
)

// imageNameRE is OpenShift's rule for Image names in practice: a digest.
var imageNameRE = regexp.MustCompile(`^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$`)

// streamNameRE is a registry repository path component, which is what an
// ImageStream name becomes in a pull spec.
var streamNameRE = regexp.MustCompile(`^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$`)

func getAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	switch o := obj.(type) {
	case *imagev1.Image:
		return labels.Set(o.Labels), generic.ObjectMetaFieldsSet(&o.ObjectMeta, false), nil
	case *imagev1.ImageStream:
		return labels.Set(o.Labels), generic.ObjectMetaFieldsSet(&o.ObjectMeta, true), nil
	}
	return nil, nil, fmt.Errorf("unexpected object %T", obj)
}

func matcher(label labels.Selector, fld fields.Selector) storage.SelectionPredicate {
	return storage.SelectionPredicate{Label: label, Field: fld, GetAttrs: getAttrs}
}

// imageStrategy: cluster-scoped, named by digest, immutable image identity.
type imageStrategy struct {
	runtime.ObjectTyper
	names.NameGenerator
}

func (imageStrategy) NamespaceScoped() bool                                            { return false }
func (imageStrategy) PrepareForCreate(context.Context, runtime.Object)                 {}
func (imageStrategy) PrepareForUpdate(context.Context, runtime.Object, runtime.Object) {}
func (imageStrategy) WarningsOnCreate(context.Context, runtime.Object) []string        { return nil }
func (imageStrategy) AllowCreateOnUpdate() bool                                        { return false }
func (imageStrategy) AllowUnconditionalUpdate() bool                                   { return true }
func (imageStrategy) Canonicalize(runtime.Object)                                      {}
func (imageStrategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

func (imageStrategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	img := obj.(*imagev1.Image)
	errs := field.ErrorList{}
	if !imageNameRE.MatchString(img.Name) {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), img.Name,
			"must be an image digest such as sha256:<64 hex characters>"))
	}
	if img.DockerImageReference == "" {
		errs = append(errs, field.Required(field.NewPath("dockerImageReference"), ""))
	}
	return errs
}

func (imageStrategy) ValidateUpdate(_ context.Context, obj, old runtime.Object) field.ErrorList {
	img, prev := obj.(*imagev1.Image), old.(*imagev1.Image)
	errs := genericvalidation.ValidateObjectMetaUpdate(&img.ObjectMeta, &prev.ObjectMeta, field.NewPath("metadata"))
	if img.DockerImageReference == "" {
		errs = append(errs, field.Required(field.NewPath("dockerImageReference"), ""))
	}
	return errs
}

// streamStrategy: namespaced; status only through the status subresource.
type streamStrategy struct {
	runtime.ObjectTyper
	names.NameGenerator
}

func (streamStrategy) NamespaceScoped() bool { return true }

func (streamStrategy) PrepareForCreate(_ context.Context, obj runtime.Object) {
	obj.(*imagev1.ImageStream).Status = imagev1.ImageStreamStatus{}
}

func (streamStrategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	obj.(*imagev1.ImageStream).Status = old.(*imagev1.ImageStream).Status
}

func (streamStrategy) WarningsOnCreate(context.Context, runtime.Object) []string { return nil }
func (streamStrategy) AllowCreateOnUpdate() bool                                 { return false }
func (streamStrategy) AllowUnconditionalUpdate() bool                            { return true }
func (streamStrategy) Canonicalize(runtime.Object)                               {}
func (streamStrategy) WarningsOnUpdate(context.Context, runtime.Object, runtime.Object) []string {
	return nil
}

func validateStreamName(name string) field.ErrorList {
	errs := field.ErrorList{}
	for _, msg := range path.IsValidPathSegmentName(name) {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), name, msg))
	}
	if !streamNameRE.MatchString(name) {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), name,
			"must be a registry repository name: lowercase letters and digits separated by '.', '_', '__' or '-'"))
	}
	return errs
}

func validateTags(is *imagev1.ImageStream) field.ErrorList {
	errs := field.ErrorList{}
	seen := map[string]bool{}
	for i, t := range is.Spec.Tags {
		p := field.NewPath("spec", "tags").Index(i).Child("name")
		if t.Name == "" {
			errs = append(errs, field.Required(p, ""))
		} else if seen[t.Name] {
			errs = append(errs, field.Duplicate(p, t.Name))
		}
		seen[t.Name] = true
	}
	return errs
}

func (streamStrategy) Validate(_ context.Context, obj runtime.Object) field.ErrorList {
	is := obj.(*imagev1.ImageStream)
	return append(validateStreamName(is.Name), validateTags(is)...)
}

func (streamStrategy) ValidateUpdate(_ context.Context, obj, old runtime.Object) field.ErrorList {
	is, prev := obj.(*imagev1.ImageStream), old.(*imagev1.ImageStream)
	errs := genericvalidation.ValidateObjectMetaUpdate(&is.ObjectMeta, &prev.ObjectMeta, field.NewPath("metadata"))
	return append(errs, validateTags(is)...)
}

// streamStatusStrategy: updates through imagestreams/status change only status.
type streamStatusStrategy struct{ streamStrategy }

func (streamStatusStrategy) PrepareForUpdate(_ context.Context, obj, old runtime.Object) {
	is, prev := obj.(*imagev1.ImageStream), old.(*imagev1.ImageStream)
	is.Spec = prev.Spec
	is.Labels = prev.Labels
	is.Annotations = prev.Annotations
}

func (streamStatusStrategy) ValidateUpdate(_ context.Context, obj, old runtime.Object) field.ErrorList {
	is, prev := obj.(*imagev1.ImageStream), old.(*imagev1.ImageStream)
	errs := genericvalidation.ValidateObjectMetaUpdate(&is.ObjectMeta, &prev.ObjectMeta, field.NewPath("metadata"))
	for i, tag := range is.Status.Tags {
		p := field.NewPath("status", "tags").Index(i)
		if tag.Tag == "" {
			errs = append(errs, field.Required(p.Child("tag"), ""))
		}
		for j, item := range tag.Items {
			if item.Image == "" {
				errs = append(errs, field.Required(p.Child("items").Index(j).Child("image"), ""))
			}
		}
	}
	return errs
}
